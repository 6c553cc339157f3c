"""Fixtures of the loader tests: an export store and a way to load one day."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.vt_feed.load import LoadSettings, load_day

EVERYTHING = ImportPolicy.parse("ALL")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "export")


@pytest.fixture
def load(warehouse, store):
    """``load(day, policy=..., **settings)`` with small batches and chunks so every path runs several
    times; without a policy, load_day's default (the upstream's production set)."""

    def _load(day: str, *, on_event=None, log=None, policy: ImportPolicy | None = None, **overrides):
        options = {"batch_rows": 3, "merge_chunk_rows": 4, **overrides}
        return load_day(
            warehouse,
            store,
            day,
            LoadSettings(**options),
            log=log or logging.getLogger("test.load"),
            quarantine=lambda records: warehouse.add_quarantine("vt_feed/ioc_file_hashes", day, records),
            on_event=on_event,
            **({"policy": policy} if policy is not None else {}),
        )

    return _load

