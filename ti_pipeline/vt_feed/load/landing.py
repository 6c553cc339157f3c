"""Which exported days are ready to load: the sensor's decisions as pure functions.

A day is ready when its ``vt_file_reports`` ``_SUCCESS`` manifest exists (written last, so never
for an incomplete export). The cursor is a high-water mark, ``(manifest updated time, name)``: every
manifest written or rewritten after it is news, in that order, however many days exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ti_pipeline.core.exports import VT_FILE_REPORTS_DATASET, manifest_day
from ti_pipeline.core.objectstore import ObjectInfo, ObjectStore


@dataclass(frozen=True, order=True)
class Mark:
    updated: float
    name: str

    def encode(self) -> str:
        return json.dumps({"updated": self.updated, "name": self.name})

    @staticmethod
    def decode(cursor: str | None) -> Mark | None:
        if not cursor:
            return None
        data = json.loads(cursor)
        return Mark(float(data["updated"]), str(data["name"]))


@dataclass(frozen=True)
class LandedDay:
    day: str
    generation: int
    mark: Mark

    @property
    def run_key(self) -> str:
        """Changes whenever the day is re-exported (a new manifest generation), so it loads again."""
        return f"vt_load:{self.day}:{self.generation}"


def landed_manifests(objects: Iterable[ObjectInfo]) -> list[LandedDay]:
    """The ``_SUCCESS`` manifests among listed objects, oldest write first."""
    days = [
        LandedDay(day, info.generation, Mark(info.updated, info.name))
        for info in objects
        if (day := manifest_day(VT_FILE_REPORTS_DATASET, info.name))
    ]
    return sorted(days, key=lambda d: d.mark)


def plan(
    landed: list[LandedDay], cursor: Mark | None, limit: int, is_partition: Callable[[str], bool]
) -> tuple[list[LandedDay], list[LandedDay], Mark | None]:
    """``(to load, skipped as not a partition, new cursor)`` for at most ``limit`` new manifests."""
    news = [d for d in landed if cursor is None or d.mark > cursor][:limit]
    requests = [d for d in news if is_partition(d.day)]
    skipped = [d for d in news if not is_partition(d.day)]
    return requests, skipped, (news[-1].mark if news else cursor)


def list_landed(store: ObjectStore) -> list[LandedDay]:
    return landed_manifests(store.list(f"{VT_FILE_REPORTS_DATASET}/"))
