"""Broccoli objects (``{TI_BROCCOLI_URI}/{sha1}``) for most sample files, quirks included.

About 85% of the given SHA1s get an object, so the rest are the 404s of real life. Labels follow
Broccoli's vocabulary (the same model as the dump's ML verdict): mostly threat classes, with
``whitelist``, ``indifferent``/``clean`` and ``unknown`` verdicts that the default import policy keeps
out of ``ioc_file_hashes``, a few labels the mapping does not know (counted as UNKNOWN), one object
that is not JSON and one without a ``classification`` field (both rejected lookups). Same seed, same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import orjson

from ti_pipeline.core import keys
from ti_pipeline.core.objectstore import ObjectStore

LABELS = [
    ("malware", 40),
    ("pua", 14),
    ("ransomware", 8),
    ("hacktool", 6),
    ("maltool", 3),
    ("suspicious", 8),
    ("whitelist", 6),
    ("indifferent", 6),
    ("clean", 4),
    ("unknown", 5),
    ("coinminer", 3),  # not in the mapping: UNKNOWN, counted by name
]
SHARE_WITH_OBJECT = 0.85
MODEL_VERSION = "broccoli-2020.10"


def sample_vt_sha1s(files: int = 400) -> list[str]:
    """SHA1s of the VT sample files (``sample_data.vt.file_hashes``), enough to cover its file pool."""
    from ti_pipeline.sample_data.vt import file_hashes

    return [file_hashes(index)[1] for index in range(files)]


def broccoli_object(rng: random.Random, sha1: str) -> bytes:
    labels, weights = zip(*LABELS, strict=True)
    label = rng.choices(labels, weights)[0]
    return orjson.dumps(
        {
            "sha1": sha1,
            "classification": label,
            "score": round(rng.uniform(0.5, 1.0), 4),
            "model_version": MODEL_VERSION,
            "created": "2020-11-04T23:10:00Z",
        }
    )


def write_broccoli_objects(store: ObjectStore, sha1s: Iterable[str], seed: int = 0) -> dict[str, int]:
    """Write objects for most of ``sha1s`` (valid lower-case SHA1s only); returns name -> bytes."""
    rng = random.Random(seed)
    written: dict[str, int] = {}
    quirks = [b'{"sha1": "truncated", "classification": "malw', b'{"sha1": null, "score": 0.7}']
    for sha1 in sha1s:
        if keys.normalise_hex(sha1, "sha1") != sha1 or rng.random() >= SHARE_WITH_OBJECT:
            continue
        body = quirks.pop(0) if quirks and rng.random() < 0.05 else broccoli_object(rng, sha1)
        store.write_bytes(sha1, body)
        written[sha1] = len(body)
    return written
