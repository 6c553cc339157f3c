"""Encrypted organisation submissions (Cybex-P archive compatible): pure modules, no Dagster."""
