import base64
import json
import logging
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, build_sensor_context, materialize

from ti_pipeline import cli
from ti_pipeline.core import schema
from ti_pipeline.core.objectstore import LocalStore, ObjectStore, open_store
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.defs.resources import ObjectStoreResource, PrivateKeyFileResource, WarehouseResource
from ti_pipeline.defs.submissions.assets import customer_ioc
from ti_pipeline.defs.submissions.sensors import poll, submissions_sensor
from ti_pipeline.sample_data.submissions import write_submissions
from ti_pipeline.submissions import crypto, lake
from ti_pipeline.submissions.polling import PollState
from ti_pipeline_tests.submissions.keyring import archive_key, secret_fragments

# (org, typetag, state, reason prefix, skip, rows_written) of the sample lake, oldest first.
SAMPLE_LEDGER = [
    ("acme", "ioc_csv", "SUCCESS", None, False, 6),
    ("globex", "stix2_bundle", "SUCCESS", None, False, 7),
    ("initech", "misp_event", "SUCCESS", None, False, 8),
    ("acme", "ioc_csv", "SUCCESS", None, False, 2),
    ("umbrella", "openioc_xml", "NOT_SUPPORTED", "no parser for typetag 'openioc_xml'", True, 0),
    ("acme", "ioc_csv", "ERROR", "payload authentication failed (tampered or truncated blob)", True, 0),
    ("globex", "stix2_bundle", "ERROR", "session key does not decrypt with this private key", True, 0),
    ("umbrella", "misp_event", "ERROR", "payload nests deeper than 32 levels", True, 0),
    ("initech", "misp_event", "SUCCESS", "duplicate of ", False, 0),
]
ACME_ROWS = [
    ("domain", "intranet.acme.example", "ALLOW", "'); DROP TABLE customer_ioc; --"),
    ("domain", "new-c2.example", "BLOCK", None),
    ("domain", "xn--bcher-kva.example", "BLOCK", "IDN phishing"),
    ("ip", "203.0.113.7", "BLOCK", "C2 (listed twice)"),
    ("ip", "8.8.8.8", "BLOCK", "resolver abused"),  # the later submission wins over "allow"
    ("md5", "d41d8cd98f00b204e9800998ecf8427e", "BLOCK", None),
    ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "BLOCK", "empty-file dropper"),
]


@pytest.fixture(scope="module")
def sample_lake_template(tmp_path_factory) -> Path:
    """The sample lake and its key, written once per module (key generation is the slow part)."""
    root = tmp_path_factory.mktemp("sample_lake")
    write_submissions(LocalStore(root / "lake"), root / "keys" / "private.pem")
    return root


@pytest.fixture
def sample_lake(sample_lake_template: Path, tmp_path: Path) -> tuple[str, Path]:
    """A fresh copy of the sample lake in a folder and its private key file (mode 0600)."""
    shutil.copytree(sample_lake_template, tmp_path / "sample")
    return LocalStore(tmp_path / "sample" / "lake").uri, tmp_path / "sample" / "keys" / "private.pem"


def run_asset(lake_uri: str, key_file: Path, warehouse_url: str, config: dict | None = None,
              instance: DagsterInstance | None = None, raise_on_error: bool = True):
    return materialize(
        [customer_ioc],
        instance=instance or DagsterInstance.ephemeral(),
        run_config={"ops": {"submissions__customer_ioc": {"config": config or {}}}},
        raise_on_error=raise_on_error,
        resources={
            "warehouse": WarehouseResource(url=warehouse_url),
            "submissions_lake": ObjectStoreResource(setting="TI_SUBMISSIONS_URI", uri=lake_uri),
            "submissions_private_key": PrivateKeyFileResource(setting="TI_SUBMISSIONS_PRIVATE_KEY_FILE",
                                                              path=str(key_file)),
        },
    )


def query(warehouse_url: str, statement) -> list[tuple]:
    engine = sa.create_engine(warehouse_url)
    with engine.connect() as conn:
        out = [tuple(r) for r in conn.execute(statement)]
    engine.dispose()
    return out


def ledger(warehouse_url: str) -> list[tuple]:
    t = schema.submission_ledger
    rows = query(warehouse_url, sa.select(t.c.org_id, t.c.typetag, t.c.state, t.c.reason, t.c.skip, t.c.rows_written)
                 .order_by(t.c.submitted_at, t.c.submission_id))
    return [(org, tag, state, reason, bool(skip), n) for org, tag, state, reason, skip, n in rows]


def matches(actual: list[tuple], expected: list[tuple]) -> bool:
    """Ledger rows equal, the reason compared by its expected prefix."""
    return len(actual) == len(expected) and all(
        a[:3] == e[:3] and a[4:] == e[4:] and (a[3] is None if e[3] is None else a[3].startswith(e[3]))
        for a, e in zip(actual, expected, strict=True)
    )


def ioc_rows(warehouse_url: str, org: str | None = None) -> list[tuple]:
    t = schema.customer_ioc
    where = [t.c.org_id == org] if org else []
    return query(warehouse_url, sa.select(t.c.ioc_type, t.c.value, t.c.action, t.c.comment).where(*where)
                 .order_by(t.c.org_id, t.c.ioc_type, t.c.value))


def metadata(result) -> dict:
    [mat] = result.get_asset_materialization_events()
    return {k: v.value for k, v in mat.materialization.metadata.items()}


def submission_ids(lake_uri: str) -> list[str]:
    return sorted(lake.submission_id_of(i.name) for i in open_store(lake_uri).list(lake.META_PREFIX))


def test_sample_lake_states_rows_rerun_and_force(sample_lake, warehouse_url: str):
    lake_uri, key_file = sample_lake
    result = run_asset(lake_uri, key_file, warehouse_url)
    assert matches(ledger(warehouse_url), SAMPLE_LEDGER), ledger(warehouse_url)
    assert ioc_rows(warehouse_url, "acme") == ACME_ROWS
    assert len(ioc_rows(warehouse_url)) == 22
    meta = metadata(result)
    assert {k: meta[k] for k in ("read", "written", "filtered", "rejected", "unaccounted")} == {
        "read": 36, "written": 23, "filtered": 7, "rejected": 6, "unaccounted": 0}
    assert {k: meta[f"submissions.{k}"] for k in ("read", "SUCCESS", "NOT_SUPPORTED", "ERROR", "duplicates")} == {
        "read": 9, "SUCCESS": 5, "NOT_SUPPORTED": 1, "ERROR": 3, "duplicates": 1}
    assert all(c.passed for c in result.get_asset_check_evaluations())
    q = schema.quarantine
    assert query(warehouse_url, sa.select(sa.func.count()).select_from(q).where(q.c.asset == "submissions/customer_ioc")) == [(9,)]

    again = metadata(run_asset(lake_uri, key_file, warehouse_url))
    assert (again["submissions.read"], again["submissions.already_in_ledger"], again["read"]) == (0, 9, 0)

    forced = metadata(run_asset(lake_uri, key_file, warehouse_url, {"force": True}))
    assert {k: forced[f"submissions.{k}"] for k in ("read", "SUCCESS", "NOT_SUPPORTED", "ERROR")} == {
        "read": 4, "SUCCESS": 0, "NOT_SUPPORTED": 1, "ERROR": 3}
    assert matches(ledger(warehouse_url), SAMPLE_LEDGER)
    assert query(warehouse_url, sa.select(sa.func.count()).select_from(q).where(q.c.asset == "submissions/customer_ioc")) == [(9,)]

    # Reprocessing the first acme list (older) neither counts it as its own duplicate nor undoes the newer one.
    first_acme = submission_ids(lake_uri)[0]
    named = metadata(run_asset(lake_uri, key_file, warehouse_url, {"force": True, "submissions": [first_acme]}))
    assert (named["submissions.read"], named["submissions.SUCCESS"], named["submissions.duplicates"]) == (1, 1, 0)
    assert matches(ledger(warehouse_url), SAMPLE_LEDGER)
    assert ioc_rows(warehouse_url, "acme") == ACME_ROWS


def test_latest_submission_wins_whatever_the_processing_order(sample_lake, sqlite_url: str):
    lake_uri, key_file = sample_lake
    ids = submission_ids(lake_uri)
    later_acme, earlier_acme = ids[3], ids[0]
    run_asset(lake_uri, key_file, sqlite_url, {"submissions": [later_acme]})
    run_asset(lake_uri, key_file, sqlite_url, {"submissions": [earlier_acme]})
    assert ("ip", "8.8.8.8", "BLOCK", "resolver abused") in ioc_rows(sqlite_url, "acme")


def test_cap_leaves_the_rest_for_the_next_run(sample_lake, sqlite_url: str):
    lake_uri, key_file = sample_lake
    first = metadata(run_asset(lake_uri, key_file, sqlite_url, {"max_submissions": 4}))
    assert (first["submissions.read"], first["submissions.left_for_later"]) == (4, 5)
    second = metadata(run_asset(lake_uri, key_file, sqlite_url))
    assert (second["submissions.read"], second["submissions.already_in_ledger"]) == (5, 4)
    assert matches(ledger(sqlite_url), SAMPLE_LEDGER)


def test_broken_lake_entries_end_in_error_with_reasons(tmp_path: Path, sqlite_url: str):
    store = LocalStore(tmp_path / "lake")
    key_file = tmp_path / "private.pem"
    crypto.write_private_key(key_file, archive_key().export_key())
    store.write_bytes("meta/bad name.json", b"{}")
    store.write_bytes("meta/garbage.json", b"\x00not json")
    store.write_bytes("meta/no-blob.json", json.dumps({"orgid": "o", "typetag": "ioc_csv", "timestamp": 1}).encode())
    store.write_bytes("meta/huge.json", json.dumps({"orgid": "o", "typetag": "ioc_csv", "timestamp": 2}).encode())
    store.write_bytes("blobs/huge.bin", b"\x00" * (2 << 20))
    result = run_asset(store.uri, key_file, sqlite_url, {"max_payload_mib": 1})
    t = schema.submission_ledger
    got = dict(query(sqlite_url, sa.select(t.c.submission_id, t.c.reason).where(t.c.state == "ERROR")))
    bad_id = next(k for k in got if k.startswith("badname-"))
    assert got == {
        bad_id: "metadata object name is not meta/<submission id>.json",
        "garbage": "invalid metadata: metadata record is not JSON",
        "no-blob": "no blob blobs/no-blob.bin beside the metadata record",
        "huge": "blob of 2097152 bytes exceeds the 1048576-byte cap",
    }
    meta = metadata(result)
    assert {k: v for k, v in meta.items() if k.startswith("submissions.rejected.")} == {
        "submissions.rejected.blob_missing": 1, "submissions.rejected.metadata": 2, "submissions.rejected.too_large": 1}


def test_round_trip_with_the_producer_commands(tmp_path: Path, sqlite_url: str, capsys):
    private, public = tmp_path / "keys" / "archive_private.pem", tmp_path / "keys" / "archive_public.pem"
    assert cli.main(["keygen", "--private-key", str(private)]) == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and public.exists()
    assert cli.main(["keygen", "--private-key", str(private)]) == 2
    assert "exists (use --force" in capsys.readouterr().err
    payload = tmp_path / "blocklist.csv"
    payload.write_text("type,value,action,comment\ndomain,Evil.Example,block,from the CLI\n")
    lake_uri = (tmp_path / "lake").as_uri()
    args = ["submit", "--org", "acme", "--typetag", "ioc_csv", "--public-key", str(public), "--uri", lake_uri]
    assert cli.main([*args, str(payload)]) == 0
    submission_id = capsys.readouterr().out.split()[0]
    assert submission_ids(lake_uri) == [submission_id]
    assert cli.main([*args[:2], "../x", *args[3:], str(payload)]) == 2
    assert "orgid is not an organisation id" in capsys.readouterr().err

    run_asset(lake_uri, private, sqlite_url)
    assert ioc_rows(sqlite_url, "acme") == [("domain", "evil.example", "BLOCK", "from the CLI")]
    assert ledger(sqlite_url) == [("acme", "ioc_csv", "SUCCESS", None, False, 1)]


def test_key_file_readable_by_others_fails_the_run_clearly(sample_lake, sqlite_url: str):
    lake_uri, key_file = sample_lake
    key_file.chmod(0o644)
    result = run_asset(lake_uri, key_file, sqlite_url, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert f"mode 0644: group or others may access it; run `chmod 600 {key_file}`" in message
    assert ledger(sqlite_url) == []


def test_no_key_session_key_or_payload_in_logs_metadata_ledger(tmp_path: Path, sqlite_url: str, caplog, capsys):
    store = LocalStore(tmp_path / "lake")
    key_file = tmp_path / "private.pem"
    crypto.write_private_key(key_file, archive_key().export_key())
    drawn: list[bytes] = []

    def recording_rand(n: int) -> bytes:
        drawn.append(crypto.get_random_bytes(n))
        return drawn[-1]

    marker = "PAYLOAD-MARKER-7f3a"
    for typetag, payload in [
        ("ioc_csv", f"type,value,action,comment\nmd5,d41d8cd98f00b204e9800998ecf8427e,block,{marker}\n"
                    f"domain,not a domain {marker},block,\n"),
        ("misp_event", f'{{"Event": {{"info": "{marker}", "Attribute": [}}'),
        ("stix2_bundle", f'{{"type": "bundle", "objects": [{{"type": "indicator", "pattern": "{marker}"}}]}}'),
    ]:
        lake.write_submission(store, org_id="acme", typetag=typetag, payload=payload.encode(),
                              public_key=archive_key().publickey(), randfunc=recording_rand,
                              when=datetime(2026, 11, 1, tzinfo=UTC))
    session_keys = [k for k in drawn if len(k) == crypto.SESSION_KEY_BYTES]
    assert len(session_keys) == 3
    secrets = [marker, *secret_fragments(archive_key())]
    for session_key in session_keys:
        secrets += [session_key.hex(), base64.b64encode(session_key).decode(), repr(session_key)]

    instance = DagsterInstance.ephemeral()
    with caplog.at_level(logging.DEBUG):
        result = run_asset(store.uri, key_file, sqlite_url, instance=instance)
    states = sorted(r[2] for r in ledger(sqlite_url))
    assert states == ["ERROR", "SUCCESS", "SUCCESS"]
    captured = capsys.readouterr()
    event_log = [f"{r.user_message}\n{r.dagster_event!r}" for r in instance.all_logs(result.run_id)]
    texts = {
        "caplog": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        "event log": "\n".join(event_log),
        "metadata": repr(metadata(result)),
        "ledger": repr(query(sqlite_url, sa.select(schema.submission_ledger))),
        "quarantine": repr(query(sqlite_url, sa.select(schema.quarantine))),
    }
    assert "SUCCESS" in texts["event log"]  # the per-submission lines were captured
    leaks = {(where, s[:12]) for where, text in texts.items() for s in secrets if s in text}
    assert leaks == set()
    assert ioc_rows(sqlite_url) == [("md5", "d41d8cd98f00b204e9800998ecf8427e", "BLOCK", marker)]


def test_gcs_lake_on_the_emulator(gcs_bucket: str, sample_lake, sqlite_url: str):
    lake_uri = f"gs://{gcs_bucket}/submissions"
    _local_uri, key_file = sample_lake
    write_submissions(open_store(lake_uri), key_file)  # the same key, the same bytes
    result = run_asset(lake_uri, key_file, sqlite_url)
    assert matches(ledger(sqlite_url), SAMPLE_LEDGER)
    assert ioc_rows(sqlite_url, "acme") == ACME_ROWS
    assert metadata(result)["lake"] == lake_uri
    first = poll(None, open_store(lake_uri), now=0.0, uniform=0.0)
    assert len(first.run_requests[0].run_config["ops"]["submissions__customer_ioc"]["config"]["submissions"]) == 9


def test_sensor_requests_new_submissions_then_backs_off(sample_lake, sqlite_url: str):
    lake_uri, key_file = sample_lake
    resources = {"submissions_lake": ObjectStoreResource(setting="TI_SUBMISSIONS_URI", uri=lake_uri)}
    instance = DagsterInstance.ephemeral()
    result = submissions_sensor(build_sensor_context(instance=instance, cursor=None, resources=resources))
    [request] = result.run_requests
    requested = request.run_config["ops"]["submissions__customer_ioc"]["config"]["submissions"]
    assert sorted(requested) == submission_ids(lake_uri)
    state = PollState.from_cursor(result.cursor)
    assert (state.failed_polls, state.next_poll) == (0, 0.0)
    assert state.high_water[1] == max((i.updated, i.name) for i in open_store(lake_uri).list("meta/"))[1]

    run_asset(lake_uri, key_file, sqlite_url, request.run_config["ops"]["submissions__customer_ioc"]["config"])
    assert matches(ledger(sqlite_url), SAMPLE_LEDGER)

    idle = submissions_sensor(build_sensor_context(instance=instance, cursor=result.cursor, resources=resources))
    assert idle.run_requests == [] and "no new submissions" in idle.skip_reason.skip_message
    idle_state = PollState.from_cursor(idle.cursor)
    assert (idle_state.high_water, idle_state.failed_polls) == (state.high_water, 1)
    assert idle_state.next_poll > 0

    waiting = PollState(state.high_water, 3, 4_102_444_800.0).to_cursor()  # 2100-01-01
    skipped = submissions_sensor(build_sensor_context(instance=instance, cursor=waiting, resources=resources))
    assert skipped.cursor is None and skipped.run_requests == []
    assert skipped.skip_reason.skip_message.startswith("backing off until 2100-01-01T00:00:00+00:00 after 3")


class FailingStore(ObjectStore):
    uri = "gs://unreachable/submissions"

    def __init__(self):
        self.listed = 0

    def list(self, prefix: str = ""):
        self.listed += 1
        raise RuntimeError("connection reset")


def test_poll_backs_off_on_failure_and_does_not_list_before_the_next_poll_time():
    store = FailingStore()
    first = poll(PollState(None, 2, 100.0).to_cursor(), store, now=100.0, uniform=0.75)
    assert first.skip_reason.skip_message.startswith("listing gs://unreachable/submissions failed (RuntimeError)")
    assert PollState.from_cursor(first.cursor) == PollState(None, 3, 100.0 + 8.75)
    early = poll(first.cursor, store, now=108.0, uniform=0.0)
    assert store.listed == 1 and early.cursor is None
    capped = poll(first.cursor, store, now=3_000_000.0, uniform=0.0)
    assert store.listed == 2 and PollState.from_cursor(capped.cursor).next_poll == 3_000_000.0 + 16.0


def test_poll_caps_each_run_and_the_run_key_names_the_set(sample_lake):
    lake_uri, _key = sample_lake
    store = open_store(lake_uri)
    cursor, batches, keys = None, [], []
    while True:
        result = poll(cursor, store, now=0.0, uniform=0.0, cap=4)
        if not result.run_requests:
            break
        [request] = result.run_requests
        batches.append(request.run_config["ops"]["submissions__customer_ioc"]["config"]["submissions"])
        keys.append(request.run_key)
        cursor = result.cursor
    assert [len(b) for b in batches] == [4, 4, 1]
    assert sorted(sum(batches, [])) == submission_ids(lake_uri)
    assert len(set(keys)) == 3
    assert poll(None, store, now=0.0, uniform=0.0, cap=4).run_requests[0].run_key == keys[0]


def test_run_killed_before_a_ledger_entry_redoes_that_submission(sample_lake, sqlite_url: str, monkeypatch):
    lake_uri, key_file = sample_lake
    ledger_writes = []
    original = Warehouse.upsert

    def failing_third_ledger_write(self, table, rows, *rule):
        if table is schema.submission_ledger:
            ledger_writes.append(1)
            if len(ledger_writes) == 3:
                raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost"))
        return original(self, table, rows, *rule)

    monkeypatch.setattr(Warehouse, "upsert", failing_third_ledger_write)
    assert not run_asset(lake_uri, key_file, sqlite_url, raise_on_error=False).success
    assert len(ledger(sqlite_url)) == 2  # the third submission's rows are in, its ledger entry is not
    monkeypatch.setattr(Warehouse, "upsert", original)
    resumed = metadata(run_asset(lake_uri, key_file, sqlite_url))
    assert (resumed["submissions.read"], resumed["submissions.already_in_ledger"]) == (7, 2)
    assert matches(ledger(sqlite_url), SAMPLE_LEDGER)
    assert ioc_rows(sqlite_url, "acme") == ACME_ROWS and len(ioc_rows(sqlite_url)) == 22
