"""Shared fixtures: a real MariaDB/MySQL database per test session, the GCS emulator, a data dir.

MySQL tests run wherever a server answers on 127.0.0.1:3306; they skip only when none does and
``CI`` is unset (in CI a missing server is a failure, not a skip).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

# Tests assert how a step fails, not Dagster's retries of it (30 s and more apart); the policy itself is
# tested in defs/test_policies.py. Set before the code location is imported (subprocesses inherit it).
os.environ.setdefault("TI_STEP_RETRIES", "0")

from ti_pipeline.core import migrations, settings  # noqa: E402
from ti_pipeline.core.warehouse import Warehouse

MYSQL_SERVER = settings.resolve("TI_TEST_MYSQL_URL")


def _mysql_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 3306), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def mysql_server_url() -> str:
    if not _mysql_reachable():
        if os.environ.get("CI"):
            pytest.fail("CI is set but no MySQL-protocol server answers on 127.0.0.1:3306")
        pytest.skip("no MySQL-protocol server on 127.0.0.1:3306 (set CI to make this a failure)")
    return MYSQL_SERVER


@pytest.fixture
def mysql_url(mysql_server_url: str):
    """A fresh database of its own for one test (tests may run in parallel), dropped afterwards."""
    name = f"ti_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{mysql_server_url}/test")
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    yield f"{mysql_server_url}/{name}?local_infile=1"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.sqlite'}"


@pytest.fixture(params=["sqlite", "mysql"])
def warehouse_url(request) -> str:
    """Both warehouse dialects: the embedded SQLite and a real MariaDB/MySQL server, migrated to
    head as ``ti-pipeline migrate`` leaves a new database."""
    url = request.getfixturevalue(f"{request.param}_url")
    migrations.upgrade(url)
    return url


@pytest.fixture
def warehouse(warehouse_url: str):
    wh = Warehouse(warehouse_url)
    wh.ensure_schema()
    yield wh
    wh.dispose()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch) -> Path:
    """An empty TI_DATA_DIR with no other TI_* setting (nor DAGSTER_HOME), so everything uses the
    embedded defaults and an ephemeral Dagster instance."""
    for name in list(os.environ):
        if (name.startswith("TI_") and name != "TI_TEST_MYSQL_URL") or name == "DAGSTER_HOME":
            monkeypatch.delenv(name)
    path = tmp_path / "ti_data"
    path.mkdir()
    monkeypatch.setenv("TI_DATA_DIR", str(path))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """``gcp-storage-emulator`` on loopback (in memory); yields its ``host:port``."""
    port = _free_port()
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    proc = subprocess.Popen(
        [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("gcp-storage-emulator did not start") from None
            time.sleep(0.1)
    host = f"http://127.0.0.1:{port}"
    yield host
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def gcs_bucket(gcs_emulator: str, monkeypatch) -> str:
    """A new empty bucket on the emulator, with STORAGE_EMULATOR_HOST set; yields its name."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="ti-pipeline", credentials=AnonymousCredentials())
    name = f"ti-test-{uuid.uuid4().hex[:10]}"
    client.create_bucket(name)
    return name
