"""Validation of the keys that become object names, table keys and URLs.

Object names are only ever built from values that passed one of these checks, so a hostile value
(``../``, a URL, an absolute path) never reaches a bucket or the file system.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date, datetime

import idna

SHARDS = ("r01", "r02", "r03", "r04", "r05", "r06")
SAGE_COLLECTIONS = ("file_rep", "domain_classification", "TOKENS", "FILE_EXTENSION_CLASSIFICATION")

_HEX = re.compile(r"[0-9a-f]+")
_HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64}
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_TLD = re.compile(r"(?!-)(?=.*[a-z])[a-z0-9-]{2,63}(?<!-)")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,254}")


class InvalidKey(ValueError):
    """A value that may not become part of a name or a key."""


def normalise_hex(value: object, kind: str) -> str | None:
    """Lower-case hex digest of ``kind`` (md5, sha1, sha256), or None when it is not one."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if len(text) != _HEX_LENGTHS[kind] or not _HEX.fullmatch(text):
        return None
    return text


def hash_kind(value: str) -> str | None:
    """Which digest a hex string is, by its length."""
    for kind, length in _HEX_LENGTHS.items():
        if len(value) == length and _HEX.fullmatch(value):
            return kind
    return None


def normalise_domain(value: object) -> str | None:
    """The one form of a host name every table stores: lower-case ASCII, IDNA 2008 / UTS 46
    (``faß.de`` -> ``xn--fa-hia.de``, never ``fass.de``), or None when it is not a valid name.

    Surrounding blanks, a leading ``//`` or ``.`` (as curated tokens carry them) and the root's
    trailing dot are removed first; labels may hold ``_`` (seen in real hosts), the TLD may not.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("//"):
        text = text[2:]
    text = text.lstrip(".").rstrip(".")
    if not text or len(text) > 253:
        return None
    if text.isascii():
        text = text.lower()
    else:
        try:
            text = idna.encode(text, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            return None
    labels = text.split(".")
    if len(labels) < 2 or len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if not _TLD.fullmatch(labels[-1]):
        return None
    return text


def normalise_ipv4(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        return None


def normalise_ip(value: object) -> str | None:
    """Canonical text of an IPv4 or IPv6 address, or None."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def shard(value: str) -> str:
    if value not in SHARDS:
        raise InvalidKey(f"not a dump shard: {value!r}")
    return value


def collection(value: str) -> str:
    if value not in SAGE_COLLECTIONS:
        raise InvalidKey(f"not a Sage collection: {value!r}")
    return value


def day(value: str | date) -> date:
    """A partition day from ``YYYY-MM-DD`` or ``YYYYMMDD``."""
    if isinstance(value, date):
        return value
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise InvalidKey(f"not a day: {value!r}")


def segment(value: str) -> str:
    """One path segment of an object name: no separators, no dot-dot, no leading dot."""
    if not _SEGMENT.fullmatch(value) or ".." in value:
        raise InvalidKey(f"not a safe object-name segment: {value!r}")
    return value


def object_name(*segments: str) -> str:
    """Join validated segments into an object name relative to a store's root."""
    return "/".join(segment(s) for s in segments)
