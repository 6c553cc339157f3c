"""Where a shard's collection files are under the dump root.

The production bucket holds ``{root}/cr-mongo-shard-{shard}.cybereason.net/cybereason/{collection}.bson``;
local copies use ``{root}/{shard}/cybereason/...``. A shard's folder is found in either without any
setting; when both exist nobody can tell which copy is meant, so that is an error. A template
(``TI_SAGE_SHARD_DIR``, ``{shard}`` placeholder) names the folder instead of looking.
"""

from __future__ import annotations

from dataclasses import dataclass

from ti_pipeline.core import keys
from ti_pipeline.core.objectstore import ObjectStore

PRODUCTION_SHARD_DIR = "cr-mongo-shard-{shard}.cybereason.net"
PLAIN_SHARD_DIR = "{shard}"
DATABASE = "cybereason"
PLACEHOLDER = "{shard}"
# Read in this order; a second existing file of the same collection is reported, never read.
SUFFIXES = (".bson", ".bson.gz")


class LayoutError(ValueError):
    """The dump's layout does not say which file to read (or a template is unusable)."""


@dataclass(frozen=True)
class DumpFile:
    name: str  # the object read
    ignored: tuple[str, ...] = ()  # the same collection in another form, not read


def shard_dir(template: str, shard: str) -> str:
    """The shard's folder from a template; the result must be one safe object-name segment."""
    rest = template.replace(PLACEHOLDER, "", 1)
    if PLACEHOLDER not in template or "{" in rest or "}" in rest:
        raise LayoutError(f"TI_SAGE_SHARD_DIR must hold {PLACEHOLDER} exactly once and no other braces: {template!r}")
    try:
        return keys.segment(template.replace(PLACEHOLDER, keys.shard(shard)))
    except keys.InvalidKey as exc:
        raise LayoutError(f"TI_SAGE_SHARD_DIR {template!r} does not make a folder name for {shard}: {exc}") from None


def object_name(shard: str, collection: str, suffix: str = ".bson", template: str = PRODUCTION_SHARD_DIR) -> str:
    """The object name of a collection file of ``shard`` in the layout ``template``."""
    if suffix not in SUFFIXES:
        raise ValueError(f"not a dump file suffix: {suffix!r}")
    return keys.object_name(shard_dir(template, shard), DATABASE, keys.collection(collection) + suffix)


def find_shard_dir(store: ObjectStore, shard: str, template: str | None = None) -> str | None:
    """The folder of ``shard``: the template's, else the one layout present; None when neither is."""
    if template:
        return shard_dir(template, shard)
    present = [
        folder
        for folder in (shard_dir(PRODUCTION_SHARD_DIR, shard), shard_dir(PLAIN_SHARD_DIR, shard))
        if next(iter(store.list(f"{folder}/{DATABASE}/")), None) is not None
    ]
    if len(present) > 1:
        first, second = (store.url_of(f"{folder}/{DATABASE}/") for folder in present)
        raise LayoutError(
            f"shard {shard} is in two folders: {first} and {second}; remove one, or set TI_SAGE_SHARD_DIR "
            f"(e.g. {PRODUCTION_SHARD_DIR}) to say which to read"
        )
    return present[0] if present else None


def find_dump_file(store: ObjectStore, shard: str, collection: str, template: str | None = None) -> DumpFile | None:
    """The file to read of ``collection`` in ``shard``: ``.bson`` when it exists (a ``.bson.gz`` beside
    it is ignored and reported), else ``.bson.gz``; None when the shard does not hold the collection."""
    folder = find_shard_dir(store, shard, template)
    if folder is None:
        return None
    base = keys.object_name(folder, DATABASE, keys.collection(collection))
    existing = [base + suffix for suffix in SUFFIXES if store.stat(base + suffix) is not None]
    return DumpFile(existing[0], tuple(existing[1:])) if existing else None


def looked_in(shard: str, template: str | None = None) -> list[str]:
    """The folders searched for ``shard``, for an error that says where nothing was found."""
    templates = [template] if template else [PRODUCTION_SHARD_DIR, PLAIN_SHARD_DIR]
    return [f"{shard_dir(t, shard)}/{DATABASE}/" for t in templates]
