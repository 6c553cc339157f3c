"""Canonical JSON and the identity hash that recognises a resubmission (SPEC §2).

``canonical``: keys sorted, lists de-duplicated and sorted, strings stripped, compact separators, so
the same content in another order or with other whitespace has the same identity.
"""

from __future__ import annotations

import hashlib
import json

# Deeper payloads are refused before anything recurses over them (no parser needs more).
MAX_DEPTH = 32


class TooDeep(ValueError):
    """A JSON value nested deeper than MAX_DEPTH."""


def depth(value: object, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a JSON value, walked without recursion; TooDeep past ``limit``."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > limit:
            raise TooDeep(f"payload nests deeper than {limit} levels")
        stack.extend((child, level + 1) for child in children)
    return deepest


def _normalise(value: object) -> object:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = {_dumps(item): item for item in map(_normalise, value)}
        return [items[k] for k in sorted(items)]
    return value


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(data: object) -> str:
    """The canonical JSON text of ``data`` (see module docstring)."""
    depth(data)
    return _dumps(_normalise(data))


def identity_hash(typetag: str, data: object) -> str:
    """``sha256("raw" + typetag + canonical(data))`` as lower-case hex."""
    # surrogatepass: JSON may escape a lone surrogate ("\ud83d", half an emoji); it hashes as itself.
    return hashlib.sha256(("raw" + typetag + canonical(data)).encode("utf-8", "surrogatepass")).hexdigest()
