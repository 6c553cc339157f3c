"""Resources: thin Dagster wrappers that hand out the warehouse and the object stores.

Each field left unset falls back to its configuration name in the environment, then to the embedded
default under ``TI_DATA_DIR`` (see ``settings``), so the same definitions run on a laptop and in
production.
"""

from __future__ import annotations

import os
from functools import cached_property

from dagster import ConfigurableResource, EnvVar
from pydantic import PrivateAttr

from ti_pipeline.core import settings
from ti_pipeline.core.objectstore import ObjectStore, open_store
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.core.warehouse import Warehouse


def from_env(name: str) -> EnvVar | None:
    """``EnvVar(name)`` when it is set (so the UI shows where a value comes from), else None."""
    return EnvVar(name) if os.environ.get(name) else None


class WarehouseResource(ConfigurableResource):
    """The Phoenix warehouse: TiDB/MySQL in production, SQLite under TI_DATA_DIR by default."""

    url: str | None = None
    batch_rows: int = 500
    import_classifications: str | None = None
    """Classifications that enter ioc_file_hashes: a comma list of ENUM values or ALL
    (``TI_IMPORT_CLASSIFICATIONS``; unset: the upstream's production set)."""
    _warehouse: Warehouse | None = PrivateAttr(default=None)

    def get(self) -> Warehouse:
        if self._warehouse is None:
            self._warehouse = Warehouse(settings.resolve("TI_WAREHOUSE_URL", self.url), batch_rows=self.batch_rows)
            self._warehouse.ensure_schema()
        return self._warehouse

    def import_policy(self) -> ImportPolicy:
        return ImportPolicy.parse(settings.optional("TI_IMPORT_CLASSIFICATIONS", self.import_classifications))


class ObjectStoreResource(ConfigurableResource):
    """A bucket prefix (``gs://``) or folder (``file://``) named by one configuration setting."""

    setting: str
    uri: str | None = None

    @cached_property
    def resolved_uri(self) -> str:
        return settings.resolve(self.setting, self.uri)

    def get(self) -> ObjectStore:
        return open_store(self.resolved_uri)


class PrivateKeyFileResource(ConfigurableResource):
    """An RSA private key file named by one setting. Only the path is configuration; the key is read
    (after refusing a file group or others may access) when an asset asks for it, never logged."""

    setting: str
    path: str | None = None

    @cached_property
    def resolved_path(self) -> str:
        return settings.resolve(self.setting, self.path)

    def load(self):
        from pathlib import Path

        from ti_pipeline.submissions.crypto import load_private_key

        return load_private_key(Path(self.resolved_path))


class MalpediaResource(ConfigurableResource):
    """The Malpedia REST API (``TI_MALPEDIA_URL``), within its request budget (60/min, 2000/h by default).

    Limits left unset come from ``TI_MALPEDIA_REQUESTS_PER_MINUTE`` / ``_PER_HOUR`` at run time, so a
    loopback server (tests, the demo) can lift them without touching the definitions.
    """

    url: str | None = None
    token: str | None = None
    requests_per_minute: int | None = None
    requests_per_hour: int | None = None
    concurrency: int = 4
    max_retries: int = 5
    backoff_base_seconds: float = 1.0
    max_retry_wait_seconds: float = 3600.0
    timeout_seconds: float = 60.0
    max_response_bytes: int = 1_048_576
    """Largest response body read (decompressed); a larger one is refused before it is read whole."""
    max_families_bytes: int = 33_554_432
    """The same for ``/get/families``, one document of every family (2.8 MB in the shipped snapshot)."""

    def budget(self):
        from ti_pipeline.threat_actors.budget import RequestBudget

        per_minute = self.requests_per_minute or int(settings.resolve("TI_MALPEDIA_REQUESTS_PER_MINUTE"))
        per_hour = self.requests_per_hour or int(settings.resolve("TI_MALPEDIA_REQUESTS_PER_HOUR"))
        return RequestBudget([(per_minute, 60.0), (per_hour, 3600.0)])

    def client(self):
        """A new client (use it as ``async with``); the token only ever goes into its request header."""
        from ti_pipeline.threat_actors.client import MalpediaClient

        return MalpediaClient(
            settings.resolve("TI_MALPEDIA_URL", self.url),
            token=self.token,
            budget=self.budget(),
            max_retries=self.max_retries,
            backoff_base=self.backoff_base_seconds,
            max_retry_wait=self.max_retry_wait_seconds,
            timeout=self.timeout_seconds,
            max_response_bytes=self.max_response_bytes,
            max_families_bytes=self.max_families_bytes,
        )


class BroccoliResource(ConfigurableResource):
    """Broccoli's per-SHA1 classification objects (``TI_BROCCOLI_URI``: gs://, http(s):// or file://)."""

    uri: str | None = None
    attempts: int = 6
    """Tries per SHA1 for 429, 5xx, timeouts and dropped connections, the first included."""
    base_delay_seconds: float = 0.25
    max_delay_seconds: float = 30.0
    max_retry_after_seconds: float = 120.0
    timeout_seconds: float = 10.0
    max_response_bytes: int = 1_048_576
    """Largest classification body read (decompressed); a larger one is a rejected lookup, not read whole."""

    @cached_property
    def resolved_uri(self) -> str:
        return settings.resolve("TI_BROCCOLI_URI", self.uri)

    def client(self, concurrency: int = 500):
        """A new lookup client (one aiohttp session per use); tokens come from google-auth for gs://."""
        from ti_pipeline.vt_feed.broccoli.client import BroccoliClient, RetryPolicy

        policy = RetryPolicy(
            attempts=self.attempts,
            base_delay=self.base_delay_seconds,
            max_delay=self.max_delay_seconds,
            max_retry_after=self.max_retry_after_seconds,
            timeout=self.timeout_seconds,
        )
        return BroccoliClient(
            self.resolved_uri, policy=policy, concurrency=concurrency, max_response_bytes=self.max_response_bytes
        )


class LoaderResource(ConfigurableResource):
    """How exported VT days reach ``ioc_file_hashes``: ``TI_LOADER`` = sql (default), lightning or import_into.

    TiDB connection fields left unset come from ``TI_TIDB_*``, then from the warehouse URL; the
    password only from ``EnvVar("TI_TIDB_PASSWORD")`` (or the URL) and is never logged.
    """

    loader: str | None = None
    batch_rows: int = 50_000
    """Rows per staging batch (one LOAD DATA / INSERT transaction)."""
    merge_chunk_rows: int = 100_000
    """Staged rows per merge transaction (keep TiDB transactions small)."""
    load_data: bool = True
    """sql loader on MySQL-family servers: LOAD DATA LOCAL INFILE (False: batched INSERTs)."""
    lightning_bin: str | None = None
    """The tidb-lightning command, e.g. ``tidb-lightning`` or ``tiup tidb-lightning`` (TI_LIGHTNING_BIN)."""
    sorted_kv_dir: str | None = None
    """Local scratch of Lightning's local backend (TI_LIGHTNING_SORTED_KV_DIR, default under TI_DATA_DIR)."""
    tidb_host: str | None = None
    tidb_port: int | None = None
    tidb_user: str | None = None
    tidb_password: str | None = None
    tidb_status_port: int | None = None
    pd_addr: str | None = None
    timeout_seconds: float = 6 * 3600.0
    """Longest a Lightning run or IMPORT INTO job may take before it is killed / cancelled."""
    poll_seconds: float = 10.0

    def load_settings(self, loader: str | None = None):
        from ti_pipeline.vt_feed.load import LoadSettings

        port = self.tidb_port or os.environ.get("TI_TIDB_PORT")
        return LoadSettings(
            loader=settings.resolve("TI_LOADER", loader or self.loader),
            batch_rows=self.batch_rows,
            merge_chunk_rows=self.merge_chunk_rows,
            load_data=self.load_data,
            lightning_bin=settings.resolve("TI_LIGHTNING_BIN", self.lightning_bin),
            sorted_kv_dir=self.sorted_kv_dir
            or os.environ.get("TI_LIGHTNING_SORTED_KV_DIR")
            or str(settings.data_dir() / "lightning-sorted-kv"),
            tidb_host=self.tidb_host or os.environ.get("TI_TIDB_HOST"),
            tidb_port=int(port) if port else None,
            tidb_user=self.tidb_user or os.environ.get("TI_TIDB_USER"),
            tidb_password=self.tidb_password,
            tidb_status_port=int(self.tidb_status_port or settings.resolve("TI_TIDB_STATUS_PORT")),
            pd_addr=self.pd_addr or os.environ.get("TI_TIDB_PD_ADDR"),
            timeout_seconds=self.timeout_seconds,
            poll_seconds=self.poll_seconds,
        )


def build_resources() -> dict:
    """Resources from the environment, each falling back to its embedded default."""
    return {
        "warehouse": WarehouseResource(url=from_env("TI_WAREHOUSE_URL")),
        "sage_dump": ObjectStoreResource(setting="TI_SAGE_DUMP_URI", uri=from_env("TI_SAGE_DUMP_URI")),
        "vt_feed": ObjectStoreResource(setting="TI_VT_FEED_URI", uri=from_env("TI_VT_FEED_URI")),
        "export_store": ObjectStoreResource(setting="TI_EXPORT_URI", uri=from_env("TI_EXPORT_URI")),
        "broccoli": BroccoliResource(uri=from_env("TI_BROCCOLI_URI")),
        "loader": LoaderResource(loader=from_env("TI_LOADER"), tidb_password=from_env("TI_TIDB_PASSWORD")),
        "submissions_lake": ObjectStoreResource(setting="TI_SUBMISSIONS_URI", uri=from_env("TI_SUBMISSIONS_URI")),
        "malpedia": MalpediaResource(url=from_env("TI_MALPEDIA_URL"), token=from_env("TI_MALPEDIA_TOKEN")),
        "submissions_private_key": PrivateKeyFileResource(
            setting="TI_SUBMISSIONS_PRIVATE_KEY_FILE", path=from_env("TI_SUBMISSIONS_PRIVATE_KEY_FILE")
        ),
    }
