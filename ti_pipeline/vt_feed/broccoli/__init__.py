"""Broccoli ML classification of exported files: label mapping, the lookup client, the per-day sidecar.

Pure modules (no Dagster): ``labels`` (Broccoli label -> classification ENUM), ``tokens`` (OAuth
headers), ``client`` (async lookups with retries), ``selection`` (what still needs a lookup),
``sidecar`` (checkpoints and the published Parquet), ``pipeline`` (one day end to end).
"""
