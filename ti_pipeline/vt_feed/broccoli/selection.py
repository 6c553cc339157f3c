"""Which SHA1s of an export day still need a Broccoli lookup.

A SHA1 "already holds a classification" when some ``ioc_file_hashes`` row with that SHA1 carries a
classifier's verdict: any value except ``AV_DETECTED`` (engines detected it, nobody classified it)
and ``UNKNOWN`` (no verdict, or a Broccoli label this version cannot map). Those two are looked up
again, since Broccoli may have an answer now; every other value is skipped unless the run asks for
a refresh.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ti_pipeline.core import schema

UNCLASSIFIED = ("AV_DETECTED", "UNKNOWN")
CLASSIFIED = tuple(c for c in schema.FILE_CLASSIFICATIONS if c not in UNCLASSIFIED)
QUERY_CHUNK = 500


def _chunks(values: pa.Array, size: int) -> Iterator[pa.Array]:
    for start in range(0, len(values), size):
        yield values.slice(start, size)


def already_classified(engine: sa.Engine, sha1s: pa.Array) -> pa.Array:
    """The subset of ``sha1s`` (fixed_size_binary(20)) that the warehouse already classifies."""
    table = schema.ioc_file_hashes
    found: list[pa.Array] = []
    with engine.connect() as conn:
        for chunk in _chunks(sha1s, QUERY_CHUNK):
            query = (
                sa.select(table.c.sha1)
                .where(table.c.sha1.in_(chunk.to_pylist()), table.c.classification.in_(CLASSIFIED))
                .distinct()
            )
            found.append(pa.array([bytes(row[0]) for row in conn.execute(query)], sha1s.type))
    return pa.concat_arrays(found) if found else pa.array([], sha1s.type)


def without(values: pa.Array, remove: pa.Array) -> pa.Array:
    """``values`` minus every element of ``remove`` (order kept)."""
    if len(remove) == 0:
        return values
    return values.filter(pc.invert(pc.is_in(values, value_set=remove)))
