"""The product's configuration names and the embedded defaults they fall back to.

Every name here is read from the environment only when nothing else set it, so a laptop with nothing
installed runs on a SQLite warehouse and folders under ``TI_DATA_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_NAMES = (
    "TI_DATA_DIR",
    "TI_WAREHOUSE_URL",
    "TI_SAGE_DUMP_URI",
    "TI_SAGE_SHARD_DIR",
    "TI_IMPORT_CLASSIFICATIONS",
    "TI_VT_FEED_URI",
    "TI_EXPORT_URI",
    "TI_BROCCOLI_URI",
    "TI_LOADER",
    "TI_LIGHTNING_BIN",
    "TI_LIGHTNING_SORTED_KV_DIR",
    "TI_TIDB_HOST",
    "TI_TIDB_PORT",
    "TI_TIDB_USER",
    "TI_TIDB_PASSWORD",
    "TI_TIDB_STATUS_PORT",
    "TI_TIDB_PD_ADDR",
    "TI_MALPEDIA_URL",
    "TI_MALPEDIA_TOKEN",
    "TI_MALPEDIA_REQUESTS_PER_MINUTE",
    "TI_MALPEDIA_REQUESTS_PER_HOUR",
    "TI_SUBMISSIONS_URI",
    "TI_SUBMISSIONS_PRIVATE_KEY_FILE",
)

# Plain values used when a name is set nowhere (the public Malpedia API and its published quota).
_DEFAULT_VALUES = {
    "TI_LOADER": "sql",
    "TI_LIGHTNING_BIN": "tidb-lightning",
    "TI_TIDB_STATUS_PORT": "10080",
    "TI_MALPEDIA_URL": "https://malpedia.caad.fkie.fraunhofer.de/api",
    "TI_MALPEDIA_REQUESTS_PER_MINUTE": "60",
    "TI_MALPEDIA_REQUESTS_PER_HOUR": "2000",
}

# Files under TI_DATA_DIR used when a file name is set nowhere (``ti-pipeline sample-data`` makes them).
_DEFAULT_FILES = {
    "TI_SUBMISSIONS_PRIVATE_KEY_FILE": "keys/submissions_private.pem",
}

# Where each object-store name lives under TI_DATA_DIR when it is not set.
_DEFAULT_FOLDERS = {
    "TI_SAGE_DUMP_URI": "sage_dump",
    "TI_VT_FEED_URI": "vt_feed",
    "TI_EXPORT_URI": "export",
    "TI_BROCCOLI_URI": "broccoli",
    "TI_SUBMISSIONS_URI": "submissions",
}


def data_dir() -> Path:
    return Path(os.environ.get("TI_DATA_DIR") or "./.ti_data").resolve()


def default_warehouse_url() -> str:
    return f"sqlite:///{data_dir() / 'warehouse.sqlite'}"


def default_uri(name: str) -> str:
    """``file://`` URI of the embedded default folder for an object-store setting."""
    return (data_dir() / _DEFAULT_FOLDERS[name]).as_uri()


def resolve(name: str, value: str | None = None) -> str:
    """The configured value of ``name``: explicit value, else environment, else embedded default."""
    if value:
        return value
    from_env = os.environ.get(name)
    if from_env:
        return from_env
    if name == "TI_WAREHOUSE_URL":
        return default_warehouse_url()
    if name in _DEFAULT_FOLDERS:
        return default_uri(name)
    if name in _DEFAULT_VALUES:
        return _DEFAULT_VALUES[name]
    if name in _DEFAULT_FILES:
        return str(data_dir() / _DEFAULT_FILES[name])
    if name == "TI_DATA_DIR":
        return str(data_dir())
    raise KeyError(f"{name} has no embedded default")


def optional(name: str, value: str | None = None) -> str | None:
    """The configured value of a setting that may stay unset (explicit value, else environment)."""
    return value or os.environ.get(name) or None
