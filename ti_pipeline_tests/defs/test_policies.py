"""Every asset retries with the one policy; failures no retry can fix are not retried."""

import json
import os
import subprocess
import sys

import pytest
from dagster import Backoff, Failure, Jitter

from ti_pipeline.core import migrations
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.defs.policies import asset_retry_policy
from ti_pipeline.defs.resources import WarehouseResource


def test_by_default_every_asset_of_the_code_location_retries_with_the_one_policy():
    # The suite turns retries off (conftest); the code location as deployed is loaded in a fresh process.
    probe = (
        "import json; from dagster import AssetsDefinition; from ti_pipeline.definitions import defs; "
        "print(json.dumps({a.node_def.name: repr(a.node_def.retry_policy) for a in defs.assets "
        "if isinstance(a, AssetsDefinition) and a.is_executable}))"
    )
    env = {name: value for name, value in os.environ.items() if name != "TI_STEP_RETRIES"}
    found = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1])
    assert len(found) == 10
    assert set(found.values()) == {repr(asset_retry_policy(3))}
    policy = asset_retry_policy(3)
    assert (policy.max_retries, policy.delay, policy.backoff, policy.jitter) == (3, 30, Backoff.EXPONENTIAL,
                                                                                  Jitter.PLUS_MINUS)


def test_no_policy_when_retries_are_off():
    assert asset_retry_policy(0) is None


def test_a_warehouse_behind_the_code_fails_without_retries(tmp_path, monkeypatch):
    def behind(self):
        raise migrations.SchemaOutOfDate("the warehouse is at 0001, the code at 0002: run `ti-pipeline migrate`")

    monkeypatch.setattr(Warehouse, "ensure_schema", behind)
    with pytest.raises(Failure) as failed:
        WarehouseResource(url=f"sqlite:///{tmp_path / 'w.sqlite'}").get()
    assert failed.value.allow_retries is False and "ti-pipeline migrate" in failed.value.description
