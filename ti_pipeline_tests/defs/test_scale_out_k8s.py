"""The Kubernetes variants: they validate as a code location, and each heavy step's pod requests as many
CPUs as its ``workers`` and the memory measured for that many processes (no cluster needed: the pod
spec is built by dagster-k8s's own code from the container context the step handler computes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from dagster import DagsterInstance, DagsterInvalidConfigError, Failure
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.executor.init import InitExecutorContext
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

from ti_pipeline.definitions import defs
from ti_pipeline.defs.scale_out import (
    K8S_STEP_WORKERS,
    STEP_SIZES,
    step_container_context,
    ti_k8s_job_executor,
)

ROOT = Path(__file__).resolve().parents[1]
K8S_JOBS = {"vt_file_reports_on_k8s": ["vt_feed__vt_file_reports"], "vt_load_on_k8s": [],
            "sage_dump_shards_on_k8s": ["sage_dump__ioc_file_hashes", "sage_dump__ioc_domains"]}
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: ti}}]
current-context: x
"""


def test_the_code_location_with_the_k8s_variants_passes_dagster_definitions_validate():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-m", "ti_pipeline.definitions"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr
    for name in K8S_JOBS:
        assert defs.resolve_job_def(name).executor_def is ti_k8s_job_executor


def pod_resources(context: K8sContainerContext):
    """The resources of the container in the Job dagster-k8s builds for a step with ``context``."""
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="ti-pipeline:test", dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"], job_name="dagster-step-test", component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )
    return job.spec.template.spec.containers[0].resources


def mib(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2])


@pytest.mark.parametrize("op", sorted(STEP_SIZES))
@pytest.mark.parametrize("workers", [1, 2, 8])
def test_a_heavy_step_pod_requests_its_workers_and_the_measured_memory(op, workers):
    # What a run launcher would give every pod: sized away for the heavy step.
    base = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
        {"container_config": {"resources": {"requests": {"cpu": "4", "memory": "8Gi"}}}}))
    resources = pod_resources(step_container_context(base, op, {"workers": workers}))
    assert resources.requests["cpu"] == str(workers)
    assert mib(resources.requests["memory"]) >= STEP_SIZES[op].peak_mib(workers) * 1.5
    assert mib(resources.limits["memory"]) == 2 * mib(resources.requests["memory"])
    assert "cpu" not in resources.limits


def test_light_steps_keep_their_resources_and_a_heavy_step_without_workers_fails_clearly():
    base = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
        {"container_config": {"resources": {"requests": {"cpu": "1"}}}}))
    assert step_container_context(base, "vt_feed__ioc_file_hashes", {}) is base
    with pytest.raises(Failure, match="set `workers`"):
        step_container_context(base, "vt_feed__vt_file_reports", {"workers": 0})


def test_the_variants_default_to_explicit_workers():
    for name, ops in K8S_JOBS.items():
        job = next(j for j in defs.jobs if j.name == name)
        assert (job.config or {}).get("ops", {}) == {op: {"config": {"workers": K8S_STEP_WORKERS}} for op in ops}


def test_the_executor_sizes_steps_through_dagster_k8s_own_step_handler(tmp_path):
    """The executor is dagster-k8s's, with a step handler whose container context for the VT export
    step carries the resources of the run's ``workers``; an explicit per_step_k8s_config still wins."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    job = defs.resolve_job_def("vt_file_reports_on_k8s")
    config = {"load_incluster_config": False, "kubeconfig_file": str(kubeconfig), "job_image": "ti-pipeline:test",
              "per_step_k8s_config": {"sage_dump__ioc_domains": {"container_config": {"resources": {"requests": {"cpu": "3"}}}}},
              "retries": {"disabled": {}}}
    with DagsterInstance.ephemeral() as instance:
        executor = ti_k8s_job_executor.executor_creation_fn(
            InitExecutorContext(job=InMemoryJob(job), executor_def=ti_k8s_job_executor, executor_config=config, instance=instance)
        )
    handler = executor._step_handler

    def context_for(op: str, workers: int):
        step = SimpleNamespace(step=SimpleNamespace(op_name=op), op_config={"workers": workers})
        return handler._get_container_context(SimpleNamespace(
            execute_step_args=SimpleNamespace(step_keys_to_execute=[op]),
            dagster_run=SimpleNamespace(job_code_origin=None, tags={}),
            instance=SimpleNamespace(run_launcher=None),
            step_tags={op: {}},
            get_step_context=lambda key: step,
        ))

    assert pod_resources(context_for("vt_feed__vt_file_reports", 6)).requests["cpu"] == "6"
    assert pod_resources(context_for("sage_dump__ioc_domains", 6)).requests["cpu"] == "3"


def test_loading_the_code_location_does_not_import_the_kubernetes_client():
    """dagster-k8s is imported by a k8s run only: every other process is spared its ~3 s of imports."""
    probe = "import sys, ti_pipeline.definitions; print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'dagster_k8s')))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("config, error", [
    ({"job_image": 7}, 'Invalid scalar at path root:job_image'),
    ({"job_imag": "ti-pipeline:test"}, 'Received unexpected config entry "job_imag" at the root'),
])
def test_the_k8s_executor_checks_its_config_against_dagster_k8s_schema_when_a_run_starts(config, error):
    job = defs.resolve_job_def("vt_file_reports_on_k8s")
    with DagsterInstance.ephemeral() as instance, pytest.raises(DagsterInvalidConfigError) as err:
        ti_k8s_job_executor.executor_creation_fn(
            InitExecutorContext(job=InMemoryJob(job), executor_def=ti_k8s_job_executor, executor_config=config, instance=instance)
        )
    assert error in str(err.value)
