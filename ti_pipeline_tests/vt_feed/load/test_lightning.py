"""The lightning loader: the generated TOML exactly, and the subprocess with stand-in executables."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from ti_pipeline.vt_feed.load import LoaderError, LoadSettings, load_day
from ti_pipeline.vt_feed.load.lightning import LightningTask, file_pattern, lightning_config, redacted
from ti_pipeline.vt_feed.load.runner import run_streaming
from ti_pipeline.vt_feed.load.tidb import TidbTarget, source_location
from ti_pipeline_tests.vt_feed.load.exportdata import (
    classification,
    report,
    rows_by_sha256,
    sha256_of,
    write_day,
)

TASK = LightningTask(
    data_source_dir="gs://ti-export/vt_file_reports/date=2024-01-01",
    part_files=("part-00000.parquet", "part-00001.parquet"),
    target=TidbTarget(host="tidb.internal", port=4000, user="loader", database="threat_intel", password='p"w\\1'),
    table="stage_vt_file_reports_20240101",
    sorted_kv_dir="/mnt/ssd/sorted-kv/stage_vt_file_reports_20240101",
    checkpoint_dsn="/tmp/work/stage_vt_file_reports_20240101.checkpoint.pb",
    status_port=10080,
    pd_addr="pd-0.internal:2379",
)


def test_the_task_config_is_exactly_what_lightning_needs():
    assert tomllib.loads(lightning_config(TASK)) == {
        "lightning": {"level": "info", "file": "-", "check-requirements": True, "max-error": 0},
        "checkpoint": {
            "enable": True,
            "driver": "file",
            "dsn": "/tmp/work/stage_vt_file_reports_20240101.checkpoint.pb",
            "keep-after-success": "remove",
        },
        "conflict": {"strategy": "error"},
        "tikv-importer": {"backend": "local", "sorted-kv-dir": "/mnt/ssd/sorted-kv/stage_vt_file_reports_20240101"},
        "mydumper": {
            "data-source-dir": "gs://ti-export/vt_file_reports/date=2024-01-01",
            "no-schema": True,
            "files": [
                {
                    "pattern": r"^(?:part\-00000\.parquet|part\-00001\.parquet)$",
                    "schema": "threat_intel",
                    "table": "stage_vt_file_reports_20240101",
                    "type": "parquet",
                }
            ],
        },
        "tidb": {
            "host": "tidb.internal",
            "port": 4000,
            "user": "loader",
            "password": 'p"w\\1',
            "status-port": 10080,
            "pd-addr": "pd-0.internal:2379",
            "sql-mode": "ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION",
        },
        "post-restore": {"checksum": "required", "analyze": "off"},
    }


def test_the_logged_config_masks_the_password():
    text = redacted(TASK)
    assert 'p\\"w' not in text and "p\"w" not in text
    assert tomllib.loads(text)["tidb"]["password"] == "******"


def test_the_routing_pattern_matches_only_listed_parts():
    import re

    pattern = re.compile(file_pattern(("part-00000.parquet", "part-00002.parquet")))
    assert [n for n in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "part-00000.parquet.tmp", "_SUCCESS") if pattern.match(n)] == [
        "part-00000.parquet",
        "part-00002.parquet",
    ]


def test_a_local_export_is_handed_to_tidb_as_a_path():
    assert source_location("file:///data/export/vt_file_reports/date=2024-01-01") == "/data/export/vt_file_reports/date=2024-01-01"
    assert source_location("gs://b/p/") == "gs://b/p"


def stand_in(tmp_path: Path, body: str) -> str:
    path = tmp_path / "tidb-lightning"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def test_output_is_streamed_and_secrets_masked(tmp_path, caplog):
    exe = stand_in(tmp_path, """
        import sys
        print("[INFO] [lightning.go] starting with password hunter2", flush=True)
        print("[INFO] [restore.go] restore all tables data completed", flush=True)
    """)
    with caplog.at_level(logging.INFO, logger="test.lightning"):
        result = run_streaming([exe], log=logging.getLogger("test.lightning"), timeout=60, secrets=["hunter2"])
    assert (result.returncode, result.lines, result.last_error) == (0, 2, None)
    assert [r.getMessage() for r in caplog.records] == [
        "tidb-lightning: [INFO] [lightning.go] starting with password ******",
        "tidb-lightning: [INFO] [restore.go] restore all tables data completed",
    ]


def test_a_failing_tool_fails_with_its_error_line(tmp_path):
    exe = stand_in(tmp_path, """
        import sys
        print("[INFO] [lightning.go] starting", flush=True)
        print("[ERROR] [main.go] tidb lightning encountered error: table is not empty", flush=True)
        print("[INFO] [main.go] exit", flush=True)
        sys.exit(1)
    """)
    with pytest.raises(LoaderError, match=r"exited with status 1: \[ERROR\] \[main.go\] tidb lightning encountered error: table is not empty"):
        run_streaming([exe], log=logging.getLogger("test"), timeout=60)


def test_a_hung_tool_is_killed_at_the_timeout(tmp_path):
    pid_file = tmp_path / "pid"
    exe = stand_in(tmp_path, f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("[INFO] waiting forever", flush=True)
        time.sleep(3600)
    """)
    with pytest.raises(LoaderError, match="timed out after 1s and was killed; last output: \\[INFO\\] waiting forever"):
        run_streaming([exe], log=logging.getLogger("test"), timeout=1)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_an_interrupted_run_kills_the_tool(tmp_path):
    import signal
    import threading

    pid_file = tmp_path / "pid"
    exe = stand_in(tmp_path, f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("[INFO] importing", flush=True)
        time.sleep(3600)
    """)

    def interrupt_once_started() -> None:
        while not pid_file.exists() or not pid_file.read_text():
            threading.Event().wait(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_streaming([exe], log=logging.getLogger("test"), timeout=600)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


# A stand-in for tidb-lightning that does what its task says: reads the config, imports the routed
# Parquet files of data-source-dir into [[mydumper.files]].table over the MySQL protocol.
FAKE_LIGHTNING = """
    import re, sys, tomllib, pathlib
    import pyarrow.parquet as pq, pymysql
    config = tomllib.loads(pathlib.Path(sys.argv[sys.argv.index("--config") + 1]).read_text())
    assert config["tikv-importer"]["backend"] == "local"
    route = config["mydumper"]["files"][0]
    tidb = config["tidb"]
    print(f"[INFO] [lightning] password is {tidb['password']}", flush=True)
    conn = pymysql.connect(host=tidb["host"], port=tidb["port"], user=tidb["user"], database=route["schema"])
    source = pathlib.Path(config["mydumper"]["data-source-dir"])
    for path in sorted(source.iterdir()):
        if not re.match(route["pattern"], path.name):
            continue
        table = pq.read_table(path)
        rows = [tuple(v.replace(tzinfo=None) if hasattr(v, "tzinfo") else v for v in r.values()) for r in table.to_pylist()]
        if rows:
            cols = ", ".join(table.column_names)
            marks = ", ".join(["%s"] * len(table.column_names))
            conn.cursor().executemany(f"INSERT INTO {route['table']} ({cols}) VALUES ({marks})", rows)
        print(f"[INFO] [restore] imported {len(rows)} rows of {path.name} into {route['table']}", flush=True)
    conn.commit()
"""


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
def test_a_day_loads_end_to_end_through_the_lightning_subprocess(tmp_path, store, warehouse, caplog):
    write_day(
        store, "2024-01-01",
        [report(n, "2024-01-01 10:00:00") for n in range(4)],
        [classification(n, "HACKTOOL") for n in range(4)],
        parts=2,
    )
    settings = LoadSettings(
        loader="lightning",
        lightning_bin=stand_in(tmp_path, FAKE_LIGHTNING),
        sorted_kv_dir=str(tmp_path / "kv"),
        work_dir=str(tmp_path / "work"),
        tidb_password="s3cret-pw",
    )
    with caplog.at_level(logging.INFO, logger="test.lightning"):
        result = load_day(warehouse, store, "2024-01-01", settings, log=logging.getLogger("test.lightning"), quarantine=lambda r: None)
    acc = result.accounting
    assert (acc.read, acc.written, acc.unaccounted, acc.figures["lightning_runs"]) == (4, 4, 0, 2)
    rows = rows_by_sha256(warehouse)
    assert {k: v["classification"] for k, v in rows.items()} == {sha256_of(n): "HACKTOOL" for n in range(4)}
    assert "s3cret-pw" not in caplog.text
    assert "password is ******" in caplog.text
    assert "imported 2 rows of part-00001.parquet" in caplog.text
    # The config file holding the password does not outlive the run.
    assert list((tmp_path / "work").rglob("*.toml")) == []


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
def test_a_lightning_that_imports_nothing_is_accounted_not_silent(tmp_path, store, warehouse):
    write_day(store, "2024-01-01", [report(n, "2024-01-01 10:00:00") for n in range(3)], [])
    settings = LoadSettings(loader="lightning", lightning_bin=stand_in(tmp_path, "print('[INFO] done')\n"), sorted_kv_dir=str(tmp_path / "kv"))
    acc = load_day(warehouse, store, "2024-01-01", settings, log=logging.getLogger("test"), quarantine=lambda r: None).accounting
    assert (acc.read, acc.written, dict(acc.rejected), acc.unaccounted) == (3, 0, {"not_imported_by_lightning": 3}, 0)
