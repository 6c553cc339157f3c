"""The README's main command: sample data, every asset and partition on the embedded defaults, counts."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize
from tqdm import tqdm

from ti_pipeline.core import schema
from ti_pipeline.definitions import defs
from ti_pipeline.defs.resources import build_resources


@dataclass(frozen=True)
class DemoStep:
    label: str
    assets: Sequence[AssetKey]
    partition_keys: Sequence[str | None] = (None,)
    # What the step needs running around it (e.g. a loopback API server), entered for its duration.
    around: Callable[[], AbstractContextManager] | None = None


def demo_steps() -> list[DemoStep]:
    from ti_pipeline.core.keys import SHARDS
    from ti_pipeline.sample_data.vt import SAMPLE_DAYS

    return [
        DemoStep("VT feed days to Parquet", [AssetKey(["vt_file_reports"])], SAMPLE_DAYS),
        DemoStep("Broccoli classification of the VT days", [AssetKey(["broccoli_classifications"])], SAMPLE_DAYS),
        DemoStep(
            "Sage dump shards",
            [AssetKey(["sage_dump", "ioc_file_hashes"]), AssetKey(["sage_dump", "ioc_domains"])],
            SHARDS,
        ),
        DemoStep(
            "Sage dump small collections",
            [
                AssetKey(["sage_dump", "ioc_tokens"]),
                AssetKey(["sage_dump", "ioc_ips"]),
                AssetKey(["sage_dump", "file_extension_classification"]),
            ],
        ),
        DemoStep("VT days merged into ioc_file_hashes (TI_LOADER)", [AssetKey(["vt_feed", "ioc_file_hashes"])], SAMPLE_DAYS),
        DemoStep("Organisation submissions (decrypt, ledger, customer_ioc)", [AssetKey(["customer_ioc"])]),
        DemoStep(
            "Malpedia actors, families, ATT&CK techniques (loopback Malpedia server)",
            [AssetKey(["threat_actors"]), AssetKey(["malware_families"]), AssetKey(["actor_techniques"])],
            around=_serve_sample_malpedia,
        ),
    ]


def _serve_sample_malpedia() -> AbstractContextManager:
    """The sample snapshot on a loopback server, with TI_MALPEDIA_URL pointing at it: no network."""
    from ti_pipeline.sample_data.malpedia import snapshot_path
    from ti_pipeline.sample_data.malpedia_server import serving

    return serving(snapshot_path())


def run_demo() -> dict[str, int]:
    """Materialize every demo step; returns rows per table. Runs are kept when DAGSTER_HOME is set."""
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    resources = build_resources()
    all_assets = {key: a for a in defs.assets for key in a.keys}
    steps = demo_steps()
    total = sum(len(s.partition_keys) for s in steps)
    with tqdm(total=total, desc="materializing", unit="partition") as bar:
        for step in steps:
            selected = list({id(all_assets[k]): all_assets[k] for k in step.assets}.values())
            with step.around() if step.around else nullcontext():
                for partition_key in step.partition_keys:
                    bar.set_postfix_str(f"{step.label} {partition_key or ''}".strip())
                    result = materialize(
                        selected,
                        resources=resources,
                        instance=instance,
                        partition_key=partition_key,
                        selection=list(step.assets),
                        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
                    )
                    if not result.success:
                        raise SystemExit(f"{step.label} {partition_key}: run failed")
                    bar.update(1)
    return table_counts()


def table_counts() -> dict[str, int]:
    warehouse = build_resources()["warehouse"].get()
    with warehouse.engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in schema.metadata.sorted_tables
        }
