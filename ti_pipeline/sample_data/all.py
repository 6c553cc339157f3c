"""Every sample input the demo needs, written to the configured stores."""

from __future__ import annotations

from pathlib import Path

from ti_pipeline.core import settings
from ti_pipeline.core.objectstore import open_store
from ti_pipeline.sample_data.broccoli import sample_vt_sha1s, write_broccoli_objects
from ti_pipeline.sample_data.malpedia import write_malpedia_snapshot
from ti_pipeline.sample_data.sage import write_sage_dump
from ti_pipeline.sample_data.submissions import write_submissions
from ti_pipeline.sample_data.vt import write_vt_feed


def write_all(docs_per_shard: int = 2000, seed: int = 0) -> dict[str, int]:
    """Write all sample inputs; returns object URL -> bytes written."""
    written: dict[str, int] = {}
    dump = open_store(settings.resolve("TI_SAGE_DUMP_URI"))
    for name, size in write_sage_dump(dump, docs_per_shard=docs_per_shard, seed=seed).items():
        written[dump.url_of(name)] = size
    vt_feed = open_store(settings.resolve("TI_VT_FEED_URI"))
    for name, size in write_vt_feed(vt_feed, seed=seed).items():
        written[vt_feed.url_of(name)] = size
    broccoli_uri = settings.resolve("TI_BROCCOLI_URI")
    if not broccoli_uri.startswith(("http://", "https://")):  # an HTTP Broccoli is read-only here
        broccoli = open_store(broccoli_uri)
        for name, size in write_broccoli_objects(broccoli, sample_vt_sha1s(), seed=seed).items():
            written[broccoli.url_of(name)] = size
    submissions = open_store(settings.resolve("TI_SUBMISSIONS_URI"))
    key_file = Path(settings.resolve("TI_SUBMISSIONS_PRIVATE_KEY_FILE"))
    for name, size in write_submissions(submissions, key_file, seed=seed).items():
        written[submissions.url_of(name)] = size
    written.update(write_malpedia_snapshot())
    return written
