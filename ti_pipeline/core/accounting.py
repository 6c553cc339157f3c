"""One accounting type for every asset: read = written + filtered (by rule) + rejected (by reason)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class QuarantineRecord:
    """A rejected input, kept with enough context to find and replay it."""

    source: str
    reason: str
    offset: int | None = None
    excerpt: str = ""

    @staticmethod
    def hex_excerpt(raw: bytes, limit: int = 512) -> str:
        return raw[:limit].hex()


@dataclass
class Accounting:
    read: int = 0
    written: int = 0
    filtered: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    # Figures beside the balance (packages found, bytes read, duplicates collapsed, ...).
    figures: Counter[str] = field(default_factory=Counter)

    def filter(self, rule: str, n: int = 1) -> None:
        self.filtered[rule] += n

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n

    def merge(self, other: Accounting) -> None:
        self.read += other.read
        self.written += other.written
        self.filtered.update(other.filtered)
        self.rejected.update(other.rejected)
        self.figures.update(other.figures)

    @property
    def filtered_total(self) -> int:
        return sum(self.filtered.values())

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def unaccounted(self) -> int:
        """Records read but neither written, filtered nor rejected: must be zero."""
        return self.read - self.written - self.filtered_total - self.rejected_total

    def as_dict(self) -> dict[str, int]:
        """Flat counts, named ``filtered.<rule>`` and ``rejected.<reason>``, for metadata and logs."""
        out = {
            "read": self.read,
            "written": self.written,
            "filtered": self.filtered_total,
            "rejected": self.rejected_total,
            "unaccounted": self.unaccounted,
        }
        out.update({f"filtered.{k}": v for k, v in sorted(self.filtered.items())})
        out.update({f"rejected.{k}": v for k, v in sorted(self.rejected.items())})
        out.update({k: v for k, v in sorted(self.figures.items())})
        return out
