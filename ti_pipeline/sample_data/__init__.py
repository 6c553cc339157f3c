"""Deterministic, realistic sample inputs for the demo, the tests and the benchmarks."""
