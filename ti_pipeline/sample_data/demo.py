"""The README's main command: sample data, every asset and partition on the embedded defaults, counts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize
from tqdm import tqdm

from ti_pipeline.core import schema, settings
from ti_pipeline.definitions import defs
from ti_pipeline.defs.resources import build_resources


@dataclass(frozen=True)
class DemoStep:
    label: str
    assets: Sequence[AssetKey]
    partition_keys: Sequence[str | None] = (None,)
    # Run config of the step's ops, beside the console logger's.
    ops: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    # What the step needs running around it (e.g. a loopback API server), entered for its duration.
    around: Callable[[], AbstractContextManager] | None = None


def demo_steps() -> list[DemoStep]:
    from ti_pipeline.core.keys import SHARDS
    from ti_pipeline.defs import sage_dump, threat_actors
    from ti_pipeline.defs.submissions.assets import CUSTOMER_IOC_KEY
    from ti_pipeline.defs.vt_feed.broccoli import BROCCOLI_CLASSIFICATIONS_KEY
    from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY
    from ti_pipeline.defs.vt_feed.load import VT_IOC_FILE_HASHES_KEY
    from ti_pipeline.sample_data.vt import SAMPLE_DAYS

    return [
        # The second sample day has one cut package of four (25 %): admitted here, so the demo loads it
        # (under the default 5 % its blocking check packages_corrupt would hold the day back).
        DemoStep("VT feed days to Parquet", [VT_FILE_REPORTS_KEY], SAMPLE_DAYS,
                 ops={"vt_feed__vt_file_reports": {"config": {"max_corrupt_share": 0.5}}}),
        DemoStep("Broccoli classification of the VT days", [BROCCOLI_CLASSIFICATIONS_KEY], SAMPLE_DAYS),
        DemoStep("Sage dump shards", [sage_dump.IOC_FILE_HASHES_KEY, sage_dump.IOC_DOMAINS_KEY], SHARDS),
        DemoStep(
            "Sage dump small collections",
            [sage_dump.IOC_TOKENS_KEY, sage_dump.IOC_IPS_KEY, sage_dump.FILE_EXTENSION_CLASSIFICATION_KEY],
        ),
        DemoStep("VT days merged into ioc_file_hashes (TI_LOADER)", [VT_IOC_FILE_HASHES_KEY], SAMPLE_DAYS),
        DemoStep("Organisation submissions (decrypt, ledger, customer_ioc)", [CUSTOMER_IOC_KEY]),
        DemoStep(
            "Malpedia actors, families, ATT&CK techniques (loopback Malpedia server)",
            [threat_actors.THREAT_ACTORS_KEY, threat_actors.MALWARE_FAMILIES_KEY, threat_actors.ACTOR_TECHNIQUES_KEY],
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
    instance = DagsterInstance.get() if settings.is_set("DAGSTER_HOME") else DagsterInstance.ephemeral()
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
                        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}, "ops": dict(step.ops)},
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
