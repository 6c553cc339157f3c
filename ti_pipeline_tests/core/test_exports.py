"""The one export partition: layout, manifest format, publishing order, and a reader that reads only
the parts of the partition, each as its manifest recorded it, never anything else."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from ti_pipeline.core.exports import (
    DayExport,
    ExportPart,
    IncompleteExport,
    Manifest,
    check_parts,
    iter_batches,
    parse_manifest,
    part_index,
    part_name,
    publish_manifest,
    read_manifest,
    require_export,
    success_name,
    unlisted_parquet,
    withdraw,
    write_table_part,
)
from ti_pipeline.core.keys import InvalidKey
from ti_pipeline.core.objectstore import LocalStore

DATASET, DAY = "vt_file_reports", "2024-01-01"
PREFIX = f"{DATASET}/date={DAY}"
HEADER = {"dataset": DATASET, "date": DAY}


def parse(manifest: object):
    return parse_manifest(json.dumps(manifest).encode(), DATASET, DAY)


def table(rows: int) -> pa.Table:
    return pa.table({"sha256": pa.array([bytes([n]) * 32 for n in range(rows)], pa.binary(32))})


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "export")


def publish_day(store: LocalStore, *tables: pa.Table) -> Manifest:
    parts = tuple(write_table_part(store, DATASET, DAY, index, t) for index, t in enumerate(tables))
    manifest = Manifest(DATASET, date.fromisoformat(DAY), parts, sum(len(t) for t in tables), {"note": "x"})
    publish_manifest(store, manifest)
    return manifest


# ---- layout ---------------------------------------------------------------------------------------


def test_names_are_built_from_validated_keys_and_read_back():
    assert part_name(DATASET, "20240101", 3) == f"{PREFIX}/part-00003.parquet"
    assert success_name(DATASET, date(2024, 1, 1)) == f"{PREFIX}/_SUCCESS"
    assert part_index(part_name(DATASET, DAY, 12)) == 12
    assert part_index(f"{PREFIX}/_SUCCESS") == -1
    for dataset, day in (("../x", DAY), ("a/b", DAY), (DATASET, "2024-13-01")):
        with pytest.raises(InvalidKey):
            part_name(dataset, day, 0)


# ---- the manifest format --------------------------------------------------------------------------


def test_the_manifest_has_one_day_key_and_round_trips():
    manifest = Manifest(DATASET, date(2024, 1, 1), (ExportPart(f"{PREFIX}/part-00000.parquet", 3, 11),), 3, {"accounting": {"read": 4}})
    document = json.loads(manifest.encode())
    assert document == {
        "dataset": DATASET,
        "date": DAY,
        "parts": [{"name": f"{PREFIX}/part-00000.parquet", "rows": 3, "generation": 11}],
        "rows": 3,
        "accounting": {"read": 4},
    }
    assert parse_manifest(manifest.encode(), DATASET, DAY) == manifest
    with pytest.raises(ValueError, match="own keys"):
        Manifest(DATASET, date(2024, 1, 1), (), 0, {"day": DAY}).encode()


def test_a_manifest_published_with_the_legacy_day_key_is_still_read():
    manifest = parse({"dataset": DATASET, "day": DAY, "parts": [], "rows": 0, "objects_not_read": []})
    assert (manifest.day, manifest.details) == (date(2024, 1, 1), {"objects_not_read": []})


def test_full_and_bare_part_names_are_read_with_rows_and_generation():
    manifest = parse({**HEADER, "parts": [{"name": f"{PREFIX}/part-00000.parquet", "rows": 3, "generation": 11}, {"name": "part-00001.parquet", "rows": 2}], "rows": 5})
    assert manifest.parts == (ExportPart(f"{PREFIX}/part-00000.parquet", 3, 11), ExportPart(f"{PREFIX}/part-00001.parquet", 2, None))
    assert manifest.rows == 5


@pytest.mark.parametrize(
    "name",
    [
        "vt_file_reports/date=2024-01-02/part-00000.parquet",
        f"{PREFIX}/../date=2024-01-02/part-00000.parquet",
        f"{PREFIX}/sub/part-00000.parquet",
        f"{PREFIX}/_SUCCESS",
        "/etc/passwd",
    ],
)
def test_a_manifest_listing_anything_else_is_refused(name):
    with pytest.raises(IncompleteExport):
        parse({**HEADER, "parts": [{"name": name, "rows": 1}], "rows": 1})


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b'{"rows": 1}',
        json.dumps({**HEADER, "parts": [{"rows": 1}], "rows": 1}).encode(),
        json.dumps({**HEADER, "parts": [{"name": "part-00000.parquet"}], "rows": 1}).encode(),
        json.dumps({**HEADER, "parts": [], "rows": "1"}).encode(),
        json.dumps({"parts": [], "rows": 0}).encode(),  # names no partition
        json.dumps({**HEADER, "date": "2024-01-02", "parts": [], "rows": 0}).encode(),  # another day's
        json.dumps({**HEADER, "dataset": "broccoli_classifications", "parts": [], "rows": 0}).encode(),
    ],
)
def test_what_is_not_this_partitions_manifest_is_refused(raw):
    with pytest.raises(IncompleteExport):
        parse_manifest(raw, DATASET, DAY)


# ---- publishing and reading -----------------------------------------------------------------------


class RecordingStore(LocalStore):
    """Remembers the order of its writes."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.writes: list[str] = []

    def write_file(self, name, local_path, **kwargs):
        self.writes.append(name)
        return super().write_file(name, local_path, **kwargs)


def test_parts_are_written_first_the_manifest_last_and_leftovers_deleted(tmp_path: Path):
    store = RecordingStore(tmp_path / "export")
    store.write_bytes(part_name(DATASET, DAY, 7), b"left by a killed run")
    store.writes.clear()

    manifest = publish_day(store, table(2), table(1))

    assert store.writes == [part_name(DATASET, DAY, 0), part_name(DATASET, DAY, 1), success_name(DATASET, DAY)]
    assert sorted(o.name for o in store.list(f"{DATASET}/")) == sorted(store.writes)
    export = require_export(store, DATASET, DAY)
    assert export.manifest == manifest
    assert (export.rows, export.prefix, export.manifest.details) == (3, PREFIX, {"note": "x"})
    assert export.manifest_generation == store.stat(success_name(DATASET, DAY)).generation
    check_parts(store, export)
    batches = [(offset, batch.num_rows) for part in export.parts for offset, batch in iter_batches(store, part, 1)]
    assert batches == [(0, 1), (1, 1), (0, 1)]


def test_a_withdrawn_or_unpublished_partition_is_incomplete(store):
    write_table_part(store, DATASET, DAY, 0, table(1))
    assert read_manifest(store, DATASET, DAY) is None
    with pytest.raises(IncompleteExport, match=f"{PREFIX}/_SUCCESS does not exist: the export is incomplete"):
        require_export(store, DATASET, DAY)
    publish_day(store, table(1))
    withdraw(store, DATASET, DAY)
    assert read_manifest(store, DATASET, DAY) is None


def test_a_missing_part_raises_incomplete_export(store):
    manifest = publish_day(store, table(2), table(1))
    store.delete(manifest.parts[1].name)
    export = require_export(store, DATASET, DAY)
    with pytest.raises(IncompleteExport, match=r"part-00001\.parquet is listed in its manifest but missing"):
        check_parts(store, export)


def test_a_part_rewritten_after_its_manifest_raises_incomplete_export(store):
    manifest = publish_day(store, table(1))
    store.write_bytes(manifest.parts[0].name, store.read_bytes(manifest.parts[0].name))
    with pytest.raises(IncompleteExport, match="changed since its manifest was written"):
        check_parts(store, require_export(store, DATASET, DAY))


def test_parquet_the_manifest_does_not_list_is_named(store):
    publish_day(store, table(1))
    store.write_bytes(part_name(DATASET, DAY, 5), b"left by an aborted export")
    export = require_export(store, DATASET, DAY)
    assert isinstance(export, DayExport)
    assert unlisted_parquet(store, export) == [part_name(DATASET, DAY, 5)]
