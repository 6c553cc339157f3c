"""Every sample input the demo needs, written to the configured stores."""

from __future__ import annotations

from ti_pipeline import settings
from ti_pipeline.objectstore import open_store
from ti_pipeline.sample_data.sage import write_sage_dump


def write_all(docs_per_shard: int = 2000, seed: int = 0) -> dict[str, int]:
    """Write all sample inputs; returns object URL -> bytes written."""
    written: dict[str, int] = {}
    dump = open_store(settings.resolve("TI_SAGE_DUMP_URI"))
    for name, size in write_sage_dump(dump, docs_per_shard=docs_per_shard, seed=seed).items():
        written[dump.url_of(name)] = size
    return written
