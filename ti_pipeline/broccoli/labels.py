"""Broccoli's labels mapped to the ``classification`` ENUM of ``ioc_file_hashes``.

Broccoli answers with a free-form lower-case word (``malware``, ``pua``, ...). Each label it is known
to emit maps to one ENUM value; a label outside the table becomes ``UNKNOWN`` and is counted by name
so a new model version's vocabulary shows up in the run's metadata instead of being guessed at.
Matching ignores case, surrounding blanks, and ``-``/``_``/space differences (``Hack-Tool`` = ``hacktool``).
"""

from __future__ import annotations

import re
from functools import lru_cache

UNKNOWN = "UNKNOWN"

# Broccoli label (normalised) -> ioc_file_hashes.classification. Documented in docs/configuration.md.
LABELS: dict[str, str] = {
    "ransomware": "RANSOMWARE",
    "maltool": "MALTOOL",
    "hacktool": "HACKTOOL",
    "pua": "UNWANTED",
    "pup": "UNWANTED",
    "unwanted": "UNWANTED",
    "adware": "UNWANTED",
    "riskware": "UNWANTED",
    "grayware": "UNWANTED",
    "malware": "MALWARE",
    "malicious": "MALWARE",
    "trojan": "MALWARE",
    "virus": "MALWARE",
    "worm": "MALWARE",
    "backdoor": "MALWARE",
    "suspicious": "SUSPICIOUS",
    "blacklist": "BLACKLIST",
    "av_detected": "AV_DETECTED",
    "indifferent": "INDIFFERENT",
    "benign": "INDIFFERENT",
    "clean": "INDIFFERENT",
    "unknown": UNKNOWN,
}

_SEPARATORS = re.compile(r"[\s_-]+")


def normalise_label(label: str) -> str:
    return _SEPARATORS.sub("", label.lower())


_NORMALISED = {normalise_label(k): v for k, v in LABELS.items()}


@lru_cache(maxsize=4096)
def map_label(label: str) -> tuple[str, bool]:
    """``(classification, known)``: the ENUM value for a Broccoli label; ``UNKNOWN, False`` for a new label."""
    mapped = _NORMALISED.get(normalise_label(label))
    if mapped is None:
        return UNKNOWN, False
    return mapped, True
