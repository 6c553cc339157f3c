"""The instance configurations: both validate, and the production storage works on a real Postgres."""

import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from dagster import AssetKey, DagsterInstance, materialize
from dagster._core.instance.config import dagster_instance_config

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.defs.resources import ObjectStoreResource, WarehouseResource
from ti_pipeline.defs.sage_dump import file_extension_classification
from ti_pipeline.sample_data.sage import dump_name, extension_docs, write_dump_file

ROOT = Path(__file__).resolve().parents[1]
PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"


@pytest.mark.parametrize("source", ["dagster.yaml", "deploy/dagster.production.yaml"])
def test_instance_yaml_validates(tmp_path, monkeypatch, source):
    monkeypatch.setenv("DAGSTER_PG_URL", f"{PG_SERVER}/x")
    monkeypatch.setenv("TI_PIPELINE_IMAGE", "ti-pipeline:test")
    monkeypatch.setenv("TI_COMPUTE_LOGS_BUCKET", "ops-bucket")
    monkeypatch.setenv("TI_COMPUTE_LOGS_PREFIX", "dagster/compute-logs")
    shutil.copy(ROOT / source, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 4
    assert {"key": "ti_pipeline/heavy", "limit": config["concurrency"]["runs"]["tag_concurrency_limits"][0]["limit"]} \
        == config["concurrency"]["runs"]["tag_concurrency_limits"][0]
    assert config["python_logs"]["managed_python_loggers"] == ["ti_pipeline"]  # retries reach the run's log
    # A killed or lost run is marked failed, frees its pool slots and is re-run; step failures are the
    # assets' RetryPolicy's (ti_pipeline/defs/policies.py), not run retries'.
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] and monitoring["max_resume_run_attempts"] == 0
    assert monitoring["start_timeout_seconds"] > 0 and monitoring["cancel_timeout_seconds"] > 0
    assert 0 < monitoring["poll_interval_seconds"] <= 120
    assert monitoring["free_slots_after_run_end_seconds"] > 0
    assert config["run_retries"] == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    # Run monitoring needs a launcher that can tell whether a run worker is alive.
    launcher = {"dagster.yaml": "ti_pipeline.defs.run_launcher", "deploy/dagster.production.yaml": "dagster_k8s"}
    assert config["run_launcher"]["module"] == launcher[source]
    if source == "dagster.yaml":
        with DagsterInstance.from_config(str(tmp_path)) as instance:
            assert instance.run_launcher.supports_check_run_worker_health
            assert instance.run_monitoring_enabled and instance.run_retries_enabled


def test_production_keeps_step_logs_in_gcs(monkeypatch):
    """Run pods' stdout/stderr outlive the pods: the production instance's compute log manager is
    dagster-gcp's GCSComputeLogManager, its config valid for that class, bucket and prefix from the
    settings table's names."""
    from dagster._config import process_config
    from dagster_gcp.gcs import GCSComputeLogManager

    from ti_pipeline.core.settings import SETTINGS

    monkeypatch.setenv("TI_COMPUTE_LOGS_BUCKET", "ops-bucket")
    monkeypatch.setenv("TI_COMPUTE_LOGS_PREFIX", "dagster/compute-logs")
    compute_logs = yaml.safe_load((ROOT / "deploy/dagster.production.yaml").read_text())["compute_logs"]
    assert (compute_logs["module"], compute_logs["class"]) == ("dagster_gcp.gcs", "GCSComputeLogManager")
    assert (compute_logs["config"]["bucket"], compute_logs["config"]["prefix"]) == \
        ({"env": "TI_COMPUTE_LOGS_BUCKET"}, {"env": "TI_COMPUTE_LOGS_PREFIX"})
    assert {"TI_COMPUTE_LOGS_BUCKET", "TI_COMPUTE_LOGS_PREFIX"} <= SETTINGS.keys()
    processed = process_config(GCSComputeLogManager.config_type(), compute_logs["config"])
    assert processed.success, processed.errors
    assert (processed.value["bucket"], processed.value["prefix"]) == ("ops-bucket", "dagster/compute-logs")


@pytest.fixture
def postgres_db():
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no Postgres answers on 127.0.0.1:5432")
        pytest.skip("no Postgres on 127.0.0.1:5432")
    name = f"ti_dagster_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_production_storage_records_a_run_on_postgres(tmp_path, monkeypatch, postgres_db):
    monkeypatch.setenv("DAGSTER_PG_URL", f"{PG_SERVER}/{postgres_db}")
    production = yaml.safe_load((ROOT / "deploy/dagster.production.yaml").read_text())
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": production["storage"]}))
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r04", "FILE_EXTENSION_CLASSIFICATION"), extension_docs(10))
    with DagsterInstance.from_config(str(home)) as instance:
        result = materialize(
            [file_extension_classification], instance=instance,
            run_config={"ops": {"sage_dump__file_extension_classification": {"config": {"workers": 1}}}},
            resources={"warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'w.sqlite'}"),
                       "sage_dump": ObjectStoreResource(setting="TI_SAGE_DUMP_URI", uri=store.uri)},
        )
        assert result.success
        key = AssetKey(["sage_dump", "file_extension_classification"])
        event = instance.get_latest_materialization_event(key)
        assert event.asset_materialization.metadata["written"].value == 9
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"


def test_the_celery_example_config_is_what_runs_and_workers_accept(monkeypatch):
    """deploy/celery.yaml validates as the *_on_celery jobs' executor config (the workers read it the
    same way), and the worker Deployments run `ti-pipeline worker` on the heavy and warehouse queues."""
    from ti_pipeline.defs.worker import build_parser, load_config, resolve_queues

    monkeypatch.setenv("TI_CELERY_BROKER", "redis://redis:6379/0")
    monkeypatch.setenv("TI_CELERY_BACKEND", "redis://redis:6379/1")
    config = load_config(str(ROOT / "deploy/celery.yaml"))
    assert (config["broker"], config["heavy_queue"], config["warehouse_queue"]) == \
        ("redis://redis:6379/0", "ti-heavy", "ti-warehouse")
    queues = []
    for deployment in yaml.safe_load_all((ROOT / "deploy/celery-workers.k8s.yaml").read_text()):
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[:2] == ["ti-pipeline", "worker"]
        queues += resolve_queues(build_parser().parse_args(command[2:]).queue, config)
    assert queues == ["ti-heavy", "ti-warehouse"]
