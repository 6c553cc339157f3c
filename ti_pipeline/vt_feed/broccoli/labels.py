"""Broccoli's labels mapped to the ``classification`` ENUM of ``ioc_file_hashes``.

Broccoli answers with a free-form lower-case word (``malware``, ``pua``, ...), mapped by the one
table of classification words every source shares (``values.CLASSIFICATION_WORDS``). A label outside
it becomes ``UNKNOWN`` and is counted by name, so a new model version's vocabulary shows up in the
run's metadata instead of being guessed at.
"""

from __future__ import annotations

from functools import lru_cache

from ti_pipeline.core.values import classification_of

UNKNOWN = "UNKNOWN"


@lru_cache(maxsize=4096)
def map_label(label: str) -> tuple[str, bool]:
    """``(classification, known)``: the ENUM value for a Broccoli label; ``UNKNOWN, False`` for a new label."""
    mapped = classification_of(label)
    if mapped is None:
        return UNKNOWN, False
    return mapped, True
