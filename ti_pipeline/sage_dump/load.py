"""One dump file into the warehouse: stream, decode in a pool, upsert, quarantine, account."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ti_pipeline.core import schema, settings
from ti_pipeline.core.accounting import Accounting
from ti_pipeline.core.failpoints import failpoint
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.sage_dump.bson_stream import GzipStream
from ti_pipeline.sage_dump.pipeline import process_stream
from ti_pipeline.sage_dump.rules import RuleContext

TABLES = {t.name: t for t in schema.metadata.sorted_tables}
# The table whose classification mix a collection's load reports (as figures classification.<value>).
MIX_OF = {"file_rep": "ioc_file_hashes", "domain_classification": "ioc_domains"}


@dataclass(frozen=True)
class DumpOptions:
    """How the dump is read; the Sage dump assets' run config is made from these fields."""

    workers: int = 0
    """Decoding processes of one step; 0 means one per core."""
    block_mib: int = 4
    """MiB of whole documents per block handed to a decoding process."""
    shard_dir: str | None = settings.configured("TI_SAGE_SHARD_DIR")
    """A shard's folder under the dump root as a ``{shard}`` template (e.g.
    ``cr-mongo-shard-{shard}.cybereason.net``); unset: found in either layout."""


def rule_context(policy: ImportPolicy | None = None, now: datetime | None = None) -> RuleContext:
    """The context of one load: ``policy`` (default: the production import set) and ``now`` (UTC)."""
    return RuleContext(
        policy=policy if policy is not None else ImportPolicy.parse(None),
        now=now if now is not None else datetime.now(UTC).replace(tzinfo=None),
    )


def load_dump_file(
    store: ObjectStore,
    name: str,
    collection: str,
    warehouse: Warehouse,
    *,
    quarantine_key: tuple[str, str],
    ctx: RuleContext | None = None,
    options: DumpOptions | None = None,
    on_progress: Callable[[Accounting, int], None] | None = None,
) -> Accounting:
    """Load ``name`` (``.bson`` or ``.bson.gz``); rejected documents go to the quarantine under
    ``quarantine_key`` (asset, partition). Returns the file's accounting (``bytes_read`` in figures)."""
    options = options or DumpOptions()
    acc = Accounting()
    nbytes = 0
    with store.open_read(name) as raw:
        stream = GzipStream(raw) if name.endswith(".gz") else raw
        results = process_stream(
            stream, collection, store.url_of(name), ctx or rule_context(),
            workers=options.workers, block_bytes=options.block_mib << 20,
        )
        for result in results:
            for table_name, rows in result.rows.items():
                warehouse.upsert(TABLES[table_name], rows, schema.MERGE_RULES[table_name])
                failpoint("sage.block_written")
                if MIX_OF.get(collection) == table_name:
                    acc.figures.update(f"classification.{row['classification']}" for row in rows)
            warehouse.add_quarantine(*quarantine_key, result.quarantine)
            acc.merge(result.accounting)
            nbytes += result.bytes_read
            if on_progress:
                on_progress(acc, nbytes)
    acc.figures["bytes_read"] = nbytes
    return acc
