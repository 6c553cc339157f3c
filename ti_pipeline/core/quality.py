"""Checks of what the warehouse holds: keys that a reader could not use."""

from __future__ import annotations

import sqlalchemy as sa

from ti_pipeline.core import keys, schema
from ti_pipeline.core.warehouse import Warehouse


def invalid_keys(warehouse: Warehouse, table: sa.Table, sample: int = 5) -> tuple[int, list[str]]:
    """How many rows of ``table`` have a malformed key, and a few of them."""
    if table is schema.ioc_file_hashes:
        c = table.c
        bad = sa.or_(
            sa.func.length(c.sha256) != 32,
            sa.and_(c.sha1.is_not(None), sa.func.length(c.sha1) != 20),
            sa.and_(c.md5.is_not(None), sa.func.length(c.md5) != 16),
        )
        with warehouse.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(table).where(bad)).scalar_one()
            examples = [r[0].hex() for r in conn.execute(sa.select(c.sha256).where(bad).limit(sample))]
        return count, examples
    column, valid = {
        "ioc_domains": (table.c.get("domain"), keys.normalise_domain),
        "ioc_ips": (table.c.get("address"), keys.normalise_ip),
        "ioc_tokens": (table.c.get("token"), _valid_token),
    }[table.name]
    count, examples = 0, []
    with warehouse.engine.connect() as conn:
        result = conn.execution_options(yield_per=10_000).execute(sa.select(column))
        for (value,) in result:
            if valid(value) != value:
                count += 1
                if len(examples) < sample:
                    examples.append(value)
    return count, examples


def _valid_token(value: str) -> str | None:
    if keys.hash_kind(value) is not None:
        return value
    return keys.normalise_ipv4(value) or keys.normalise_domain(value)
