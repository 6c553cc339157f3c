"""The Malpedia snapshot the demo's loopback server serves: the real galaxy data, as a file.

Written under ``TI_DATA_DIR`` by ``ti-pipeline sample-data``; edit it (and raise its ``version``) to
watch an incremental sync pick up the change.
"""

from __future__ import annotations

import os
from pathlib import Path

from ti_pipeline.core import settings
from ti_pipeline.sample_data.malpedia_galaxy import MalpediaSnapshot


def snapshot_path() -> Path:
    return settings.data_dir() / "malpedia" / "snapshot.json"


def write_malpedia_snapshot(path: Path | None = None) -> dict[str, int]:
    """Write the snapshot atomically (temp file + rename); returns its URL -> bytes written."""
    path = path or snapshot_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = MalpediaSnapshot.from_galaxy().to_json().encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return {path.as_uri(): len(data)}
