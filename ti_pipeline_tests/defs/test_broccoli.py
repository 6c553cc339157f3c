import orjson
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance, materialize

from ti_pipeline.core import schema
from ti_pipeline.core.exports import success_name
from ti_pipeline.core.objectstore import open_store
from ti_pipeline.defs.resources import BroccoliResource, ObjectStoreResource, WarehouseResource
from ti_pipeline.defs.vt_feed.broccoli import broccoli_classifications
from ti_pipeline_tests.vt_feed.broccoli.server import BroccoliServer
from ti_pipeline_tests.vt_feed.broccoli.vt_export import sha1, write_vt_export

DAY = "2020-11-05"


@pytest.fixture
def server():
    running = BroccoliServer().start()
    yield running
    running.stop()


def run(export_uri: str, broccoli_uri: str, warehouse_url: str, instance=None, **config):
    return materialize(
        [broccoli_classifications],
        partition_key=DAY,
        instance=instance or DagsterInstance.ephemeral(),
        raise_on_error=False,
        run_config={"ops": {"vt_feed__broccoli_classifications": {"config": {"concurrency": 8, **config}}}},
        resources={
            "warehouse": WarehouseResource(url=warehouse_url),
            "export_store": ObjectStoreResource(setting="TI_EXPORT_URI", uri=export_uri),
            "broccoli": BroccoliResource(uri=broccoli_uri, attempts=3, base_delay=0.01, timeout=2.0),
        },
    )


def metadata(result) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def quarantine(warehouse_url: str) -> list[tuple]:
    engine = sa.create_engine(warehouse_url)
    q = schema.quarantine
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(q.c.asset, q.c.partition_key, q.c.reason, q.c.source).order_by(q.c.source))]
    engine.dispose()
    return rows


def test_materializes_a_day_with_accounting_and_quarantine(tmp_path, server, warehouse_url):
    sha1s = sorted(sha1(n) for n in range(20))
    export = open_store(str(tmp_path / "export"))
    write_vt_export(export, DAY, [sha1s[:12], sha1s[8:]])
    for n, value in enumerate(sha1s[:15]):
        server.objects[value] = orjson.dumps({"classification": ["pua", "malware", "grayware-x"][n % 3]})
    server.objects[sha1s[0]] = b"{oops"
    server.faults[sha1s[1]] = [("429", 0), ("503",)]

    result = run(export.uri, server.url, warehouse_url)

    assert result.success
    meta = metadata(result)
    assert {k: meta[k] for k in ("read", "written", "filtered", "rejected", "unaccounted", "rejected.malformed_json")} == {
        "read": 20, "written": 19, "filtered": 0, "rejected": 1, "unaccounted": 0, "rejected.malformed_json": 1,
    }
    assert {k: meta[k] for k in ("lookups.looked_up", "lookups.found", "lookups.not_found", "lookups.rejected",
                                 "lookups.retried", "labels.unknown", "classification.UNKNOWN")} == {
        "lookups.looked_up": 20, "lookups.found": 14, "lookups.not_found": 5, "lookups.rejected": 1,
        "lookups.retried": 2, "labels.unknown": 5, "classification.UNKNOWN": 5,
    }
    assert meta["lookups_per_second"] > 0
    assert "`grayware-x`: 5" in meta["unknown_labels"]
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    assert quarantine(warehouse_url) == [("vt_feed/broccoli_classifications", DAY, "malformed_json", f"{server.url}/{sha1s[0]}")]
    manifest = orjson.loads(export.read_bytes(success_name("broccoli_classifications", DAY)))
    assert manifest["rows"] == 19
    with export.open_read(manifest["parts"][0]["name"]) as f:
        table = pq.read_table(f)
    assert table.column("sha1").to_pylist() == [bytes.fromhex(s) for s in sha1s[1:]]


def test_a_failing_lookup_fails_the_partition_and_the_rerun_redoes_only_it(tmp_path, server, sqlite_url):
    sha1s = sorted(sha1(n) for n in range(10))
    export = open_store(str(tmp_path / "export"))
    write_vt_export(export, DAY, [sha1s])
    for value in sha1s:
        server.objects[value] = orjson.dumps({"classification": "malware"})
    server.faults[sha1s[4]] = [("always", ("503",))]
    instance = DagsterInstance.ephemeral()

    failed = run(export.uri, server.url, sqlite_url, instance)

    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    message = failure.event_specific_data.error.message
    assert "1 Broccoli lookup(s) still failed after their retries (http_503 after 3 tries: 1)" in message
    assert sha1s[4] in message
    assert export.stat(success_name("broccoli_classifications", DAY)) is None

    server.faults.clear()
    server.requests.clear()
    again = run(export.uri, server.url, sqlite_url, instance)

    assert again.success
    assert list(server.requests) == [sha1s[4]]
    meta = metadata(again)
    assert (meta["written"], meta["lookups.carried_over"], meta["lookups.looked_up"]) == (10, 9, 1)


def test_gcs_export_and_broccoli_bucket_on_the_emulator(gcs_bucket, sqlite_url):
    export = open_store(f"gs://{gcs_bucket}/export")
    reports = open_store(f"gs://{gcs_bucket}/latest-reports")
    sha1s = sorted(sha1(n) for n in range(6))
    write_vt_export(export, DAY, [sha1s])
    for value in sha1s[:4]:
        reports.write_bytes(value, b'{"classification": "ransomware", "score": 0.99}')

    result = run(export.uri, f"gs://{gcs_bucket}/latest-reports", sqlite_url)

    assert result.success
    meta = metadata(result)
    assert (meta["lookups.found"], meta["lookups.not_found"], meta["classification.RANSOMWARE"]) == (4, 2, 4)
    manifest = orjson.loads(export.read_bytes(success_name("broccoli_classifications", DAY)))
    with export.open_read(manifest["parts"][0]["name"]) as f:
        table = pq.read_table(f)
    assert table.column("http_status").to_pylist() == [200, 200, 200, 200, 404, 404]


def test_an_incomplete_export_fails_with_its_name(tmp_path, server, sqlite_url):
    export = open_store(str(tmp_path / "export"))
    write_vt_export(export, DAY, [[sha1(1)]], manifest=False)
    result = run(export.uri, server.url, sqlite_url)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert "vt_file_reports/date=2020-11-05/_SUCCESS does not exist" in failure.event_specific_data.error.message
