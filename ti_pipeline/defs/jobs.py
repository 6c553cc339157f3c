"""``JobSpec``: a job's selection, description and tags stated once.

Each domain states its jobs as specs (a job's assets share one partitions definition); the local jobs
and their Celery and Kubernetes variants (ti_pipeline/defs/scale_out.py) are all built from them, so a
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
