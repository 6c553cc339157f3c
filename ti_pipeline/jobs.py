"""Jobs: one per partitioning of the dump (a job's assets share one partitions definition).

Each job's selection, description and tags are stated once, in a ``JobSpec``; the local jobs below and
their Celery and Kubernetes variants (ti_pipeline/distributed.py) are all built from these specs, so a
variant can never select other assets than the job it scales out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetSelection, define_asset_job
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

HEAVY_TAG = "ti_pipeline/heavy"


@dataclass(frozen=True)
class JobSpec:
    """What a job runs; ``build`` makes the job itself or a variant of it (another executor)."""

    name: str
    selection: AssetSelection
    description: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def base_name(self) -> str:
        return self.name.removesuffix("_job")

    def variant_name(self, variant: str) -> str:
        """``vt_file_reports_job`` -> ``vt_file_reports_on_celery`` for the variant ``on_celery``."""
        return f"{self.base_name}_{variant}"

    @property
    def heavy(self) -> bool:
        """Whether the job's steps decompress or decode in a process pool of their own."""
        return HEAVY_TAG in self.tags

    def build(
        self, variant: str | None = None, *, description: str | None = None, tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> UnresolvedAssetJobDefinition:
        return define_asset_job(
            self.variant_name(variant) if variant else self.name,
            selection=self.selection,
            description=description or self.description,
            tags={**self.tags, **(tags or {})},
            **kwargs,
        )


SAGE_DUMP_SHARDS = JobSpec(
    "sage_dump_shards_job",
    AssetSelection.groups("sage_dump") & AssetSelection.assets(["sage_dump", "ioc_file_hashes"], ["sage_dump", "ioc_domains"]),
    "The shard-partitioned dump collections (file_rep, domain_classification) for one shard.",
    {HEAVY_TAG: "bson_decode"},
)
SAGE_DUMP_SMALL_COLLECTIONS = JobSpec(
    "sage_dump_small_collections_job",
    AssetSelection.assets(["sage_dump", "ioc_tokens"], ["sage_dump", "ioc_ips"], ["sage_dump", "file_extension_classification"]),
    "TOKENS (tokens, IPs, domain overlay) and FILE_EXTENSION_CLASSIFICATION.",
)
VT_FILE_REPORTS = JobSpec(
    "vt_file_reports_job",
    AssetSelection.assets("vt_file_reports"),
    "One VT feed day (or a range of days) to the vt_file_reports Parquet partition.",
    {HEAVY_TAG: "vt_decompress"},
)
# What the vt_parquet_landed sensor starts for a day: the Broccoli sidecar, then the load that needs it.
VT_LOAD = JobSpec(
    "vt_load_job",
    AssetSelection.assets("broccoli_classifications", ["vt_feed", "ioc_file_hashes"]),
    "One exported VT day: its Broccoli classification sidecar, then the merge into ioc_file_hashes.",
)
THREAT_ACTORS = JobSpec(
    "threat_actors_job",
    AssetSelection.groups("threat_actors"),
    "Malpedia sync (one version request when nothing changed), then ATT&CK techniques of changed actors.",
)

SPECS = (SAGE_DUMP_SHARDS, SAGE_DUMP_SMALL_COLLECTIONS, VT_FILE_REPORTS, VT_LOAD, THREAT_ACTORS)
# The jobs a deployment spreads over workers (ti_pipeline/distributed.py builds their variants).
SCALE_OUT = (VT_FILE_REPORTS, VT_LOAD, SAGE_DUMP_SHARDS, SAGE_DUMP_SMALL_COLLECTIONS)

sage_dump_shards_job = SAGE_DUMP_SHARDS.build()
sage_dump_small_collections_job = SAGE_DUMP_SMALL_COLLECTIONS.build()
vt_file_reports_job = VT_FILE_REPORTS.build()
vt_load_job = VT_LOAD.build()
threat_actors_job = THREAT_ACTORS.build()

jobs = [sage_dump_shards_job, sage_dump_small_collections_job, vt_file_reports_job, vt_load_job, threat_actors_job]
