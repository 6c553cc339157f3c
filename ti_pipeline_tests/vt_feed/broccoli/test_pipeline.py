import random

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.core.exports import (
    BROCCOLI_CLASSIFICATIONS,
    IncompleteExport,
    Manifest,
    read_manifest,
    success_name,
)
from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.vt_feed.broccoli import sidecar
from ti_pipeline.vt_feed.broccoli.client import BroccoliClient
from ti_pipeline.vt_feed.broccoli.pipeline import DayOptions, classify_day
from ti_pipeline.vt_feed.broccoli.selection import already_classified
from ti_pipeline_tests.vt_feed.broccoli.conftest import FAST
from ti_pipeline_tests.vt_feed.broccoli.vt_export import sha1, write_vt_export

DAY = "2020-11-05"
NOTHING_CLASSIFIED = lambda sha1s: sha1s.slice(0, 0)  # noqa: E731


@pytest.fixture
def export(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "export")


def client_for(server, concurrency: int = 20) -> BroccoliClient:
    return BroccoliClient(server.url, policy=FAST, concurrency=concurrency, rng=random.Random(3))


def sidecar_manifest(store: LocalStore, day: str = DAY) -> Manifest:
    return read_manifest(store, "broccoli_classifications", day).manifest


def sidecar_rows(store: LocalStore, day: str = DAY) -> list[tuple]:
    manifest = sidecar_manifest(store, day)
    tables = []
    for part in manifest.parts:
        with store.open_read(part.name) as f:
            table = pq.read_table(f)
        assert table.schema == BROCCOLI_CLASSIFICATIONS
        assert len(table) == part.rows
        tables.append(table)
    table = pa.concat_tables(tables)
    assert len(table) == manifest.rows
    return [(r["sha1"].hex(), r["classification"], r["label"], r["http_status"]) for r in table.to_pylist()]


def serve(server, sha1s: list[str], labels=("malware", "pua", "ransomware", "clean")) -> dict[str, tuple]:
    """Objects for 3 of every 4 SHA1s; returns the sidecar row each SHA1 should end as."""
    expected = {}
    for n, value in enumerate(sha1s):
        if n % 4 == 3:
            expected[value] = (value, None, None, 404)
            continue
        label = labels[n % len(labels)]
        server.objects[value] = orjson.dumps({"classification": label, "sha1": value})
        mapped = {"malware": "MALWARE", "pua": "UNWANTED", "ransomware": "RANSOMWARE", "clean": "INDIFFERENT"}
        expected[value] = (value, mapped.get(label, "UNKNOWN"), label, 200)
    return expected


def test_a_day_is_looked_up_under_faults_and_published_as_a_sidecar(broccoli_server, export):
    sha1s = [sha1(n) for n in range(60)]
    # Two parts, a repeated SHA1 and rows without SHA1: lookups are per distinct SHA1.
    write_vt_export(export, DAY, [sha1s[:40] + [None], sha1s[30:] + [sha1s[0], None]])
    before = {i.name: export.read_bytes(i.name) for i in export.list("vt_file_reports/")}
    expected = serve(broccoli_server, sha1s)
    broccoli_server.faults.update({sha1s[0]: [("429", 0)], sha1s[1]: [("503",)], sha1s[2]: [("cut",)], sha1s[3]: [("slow", 2.5)]})

    result = classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED,
                          options=DayOptions(checkpoint_every=7))

    assert sidecar_rows(export) == [expected[s] for s in sorted(sha1s)]
    acc = result.accounting
    assert (acc.read, acc.written, acc.filtered_total, acc.rejected_total, acc.unaccounted) == (60, 60, 0, 0, 0)
    assert acc.figures["export_rows"] == 73
    assert acc.figures["export_rows_without_sha1"] == 2
    assert acc.figures["lookups.looked_up"] == 60
    assert (acc.figures["lookups.found"], acc.figures["lookups.not_found"]) == (45, 15)
    assert acc.figures["lookups.retried"] == 4
    assert (acc.figures["classification.MALWARE"], acc.figures["classification.UNWANTED"]) == (15, 15)
    assert broccoli_server.request_count == 64
    assert sidecar.checkpoint_names(export, DAY) == []
    assert {i.name: export.read_bytes(i.name) for i in export.list("vt_file_reports/")} == before


def test_a_failed_day_keeps_its_lookups_and_the_rerun_looks_up_only_the_missing(broccoli_server, export):
    sha1s = [sha1(n) for n in range(40)]
    write_vt_export(export, DAY, [sha1s])
    expected = serve(broccoli_server, sha1s)
    broken = sorted(sha1s)[5:8]
    for value in broken:
        broccoli_server.faults[value] = [("always", ("503",))]
    malformed = sorted(sha1s)[10]
    broccoli_server.objects[malformed] = b'{"classification": '

    first = classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED,
                         options=DayOptions(checkpoint_every=5))

    assert sorted(x.sha1 for x in first.failed) == broken
    message = first.failure_message()
    assert message.startswith("3 Broccoli lookup(s) still failed after their retries (http_503 after 4 tries: 3)")
    assert all(value in message for value in broken)
    assert export.stat(success_name("broccoli_classifications", DAY)) is None
    assert sidecar.checkpoint_names(export, DAY)
    assert [(q.reason, q.source) for q in first.quarantine] == [("malformed_json", f"{broccoli_server.url}/{malformed}")]

    broccoli_server.faults.clear()
    broccoli_server.requests.clear()
    second = classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)

    assert sorted(broccoli_server.requests) == broken
    assert second.failed == []
    del expected[malformed]
    assert sidecar_rows(export) == [expected[s] for s in sorted(expected)]
    acc = second.accounting
    assert (acc.read, acc.written, dict(acc.rejected), acc.unaccounted) == (40, 39, {"malformed_json": 1}, 0)
    assert (acc.figures["lookups.carried_over"], acc.figures["lookups.looked_up"]) == (37, 3)
    assert [(q.reason, q.source) for q in second.quarantine] == [("malformed_json", f"{broccoli_server.url}/{malformed}")]
    assert sidecar.checkpoint_names(export, DAY) == []


def test_too_many_failures_stop_the_day_early_and_the_rerun_finishes_it(broccoli_server, export):
    sha1s = [sha1(n) for n in range(30)]
    write_vt_export(export, DAY, [sha1s])
    expected = serve(broccoli_server, sha1s)
    for value in sha1s:
        broccoli_server.faults[value] = [("always", ("503",))]

    first = classify_day(export, client_for(broccoli_server, concurrency=2), DAY,
                         already_classified=NOTHING_CLASSIFIED, options=DayOptions(max_failed_lookups=3))

    assert len(first.failed) in (3, 4)  # the two lookups in flight finish after the third failure
    assert first.not_attempted == 30 - len(first.failed)
    assert "not attempted" in first.failure_message()

    broccoli_server.faults.clear()
    second = classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)
    assert second.failed == []
    assert sidecar_rows(export) == [expected[s] for s in sorted(sha1s)]


def test_rematerializing_a_complete_day_reuses_the_sidecar_unless_refreshed(broccoli_server, export):
    sha1s = [sha1(n) for n in range(12)]
    write_vt_export(export, DAY, [sha1s])
    expected = serve(broccoli_server, sha1s)
    classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)
    first_parts = sidecar_manifest(export).parts
    broccoli_server.requests.clear()

    again = classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)

    assert broccoli_server.request_count == 0
    assert again.accounting.figures["lookups.carried_over"] == 12
    assert sidecar_rows(export) == [expected[s] for s in sorted(sha1s)]
    parts = sidecar_manifest(export).parts
    assert [p.name for p in parts] == ["broccoli_classifications/date=2020-11-05/part-00001.parquet"]
    assert export.stat(first_parts[0].name) is None  # the superseded part is gone

    broccoli_server.objects[sorted(sha1s)[0]] = b'{"classification": "hacktool"}'
    refreshed = classify_day(export, client_for(broccoli_server), DAY, already_classified=lambda s: s,
                             options=DayOptions(refresh=True))
    assert broccoli_server.request_count == 12
    assert refreshed.accounting.filtered_total == 0
    assert sidecar_rows(export)[0][1:3] == ("HACKTOOL", "hacktool")


def test_sha1s_the_warehouse_already_classifies_are_skipped(broccoli_server, export, warehouse):
    sha1s = [sha1(n) for n in range(8)]
    write_vt_export(export, DAY, [sha1s])
    expected = serve(broccoli_server, sha1s)
    stored = {0: "MALWARE", 1: "INDIFFERENT", 2: "AV_DETECTED", 3: "UNKNOWN"}
    with warehouse.engine.begin() as conn:
        conn.execute(
            schema.ioc_file_hashes.insert(),
            [
                {"sha256": bytes([n]) * 32, "sha1": bytes.fromhex(sha1s[n]), "classification": c, "source": "SAGE_DUMP"}
                for n, c in stored.items()
            ],
        )

    result = classify_day(export, client_for(broccoli_server), DAY,
                          already_classified=lambda s: already_classified(warehouse.engine, s))

    assert sorted(broccoli_server.requests) == sorted(sha1s[2:])
    assert dict(result.accounting.filtered) == {"already_classified_in_warehouse": 2}
    assert result.accounting.unaccounted == 0
    assert sidecar_rows(export) == [expected[s] for s in sorted(sha1s[2:])]


def test_an_incomplete_or_rewritten_export_is_refused(broccoli_server, export):
    write_vt_export(export, DAY, [[sha1(1)]], manifest=False)
    with pytest.raises(IncompleteExport, match="does not exist: the export is incomplete"):
        classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)

    [part] = write_vt_export(export, DAY, [[sha1(1)]])
    export.write_bytes(part.name, export.read_bytes(part.name))  # rewritten after its manifest
    with pytest.raises(IncompleteExport, match="changed since its manifest was written"):
        classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)
    assert broccoli_server.request_count == 0


def test_an_empty_day_publishes_an_empty_sidecar(broccoli_server, export):
    write_vt_export(export, DAY, [[None]])
    result = classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)
    assert (result.accounting.read, result.accounting.written) == (0, 0)
    assert sidecar_rows(export) == []


def test_already_classified_query(warehouse):
    values = [bytes([n]) * 20 for n in range(1, 5)]
    with warehouse.engine.begin() as conn:
        conn.execute(
            schema.ioc_file_hashes.insert(),
            [
                {"sha256": b"\1" * 32, "sha1": values[0], "classification": "RANSOMWARE", "source": "SAGE_DUMP"},
                {"sha256": b"\2" * 32, "sha1": values[0], "classification": "AV_DETECTED", "source": "VIRUS_TOTAL"},
                {"sha256": b"\3" * 32, "sha1": values[1], "classification": "AV_DETECTED", "source": "VIRUS_TOTAL"},
                {"sha256": b"\4" * 32, "sha1": values[2], "classification": "UNWANTED", "source": "SAGE_DUMP"},
            ],
        )
    found = already_classified(warehouse.engine, pa.array(values, pa.binary(20)))
    assert sorted(found.to_pylist()) == [values[0], values[2]]
    with warehouse.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.ioc_file_hashes)).scalar_one() == 4


def test_a_run_killed_half_way_is_finished_by_the_rerun_without_repeating_lookups(broccoli_server, export):
    sha1s = [sha1(n) for n in range(50)]
    write_vt_export(export, DAY, [sha1s])
    expected = serve(broccoli_server, sha1s)

    class Killed(Exception):
        pass

    def kill_after_first_checkpoint(done: int, total: int, seconds: float) -> None:
        raise Killed

    with pytest.raises(Killed):
        classify_day(export, client_for(broccoli_server, concurrency=4), DAY, already_classified=NOTHING_CLASSIFIED,
                     options=DayOptions(checkpoint_every=10), progress=kill_after_first_checkpoint)
    assert export.stat(success_name("broccoli_classifications", DAY)) is None
    [checkpoint] = sidecar.checkpoint_names(export, DAY)
    with export.open_read(checkpoint) as f:
        saved = {value.hex() for value in pq.read_table(f).column("sha1").to_pylist()}
    assert len(saved) == 10
    broccoli_server.requests.clear()

    result = classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)

    assert set(broccoli_server.requests) == set(sha1s) - saved
    assert result.accounting.figures["lookups.carried_over"] == 10
    assert sidecar_rows(export) == [expected[s] for s in sorted(sha1s)]


def test_a_reexported_day_combines_the_published_sidecar_with_the_checkpoints_of_a_failed_run(broccoli_server, export):
    sha1s = [sha1(n) for n in range(20)]
    write_vt_export(export, DAY, [sha1s[:10]])
    expected = serve(broccoli_server, sha1s)
    classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)
    write_vt_export(export, DAY, [sha1s])  # re-exported with ten more files
    broken = sorted(sha1s[10:])[0]
    broccoli_server.faults[broken] = [("always", ("503",))]
    broccoli_server.requests.clear()

    failed = classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)

    assert [x.sha1 for x in failed.failed] == [broken]
    assert set(broccoli_server.requests) == set(sha1s[10:])
    broccoli_server.faults.clear()
    broccoli_server.requests.clear()

    done = classify_day(export, client_for(broccoli_server), DAY, already_classified=NOTHING_CLASSIFIED)

    assert list(broccoli_server.requests) == [broken]
    assert done.accounting.figures["lookups.carried_over"] == 19
    assert sidecar_rows(export) == [expected[s] for s in sorted(sha1s)]
