"""Resources: thin Dagster wrappers that hand out the warehouse, the object stores and the clients.

A field backed by a ``TI_*`` name (``core.settings``) is ``EnvVar(name)`` when the name is set, so the
launchpad shows where the value comes from and Dagster reads it when the run starts; a field left
None takes the settings table's default (or the environment of the run) when it is used. Secrets
reach a resource only as ``EnvVar`` and are never logged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from dagster import AssetKey, ConfigurableResource, EnvVar
from pydantic import PrivateAttr

from ti_pipeline.core import settings
from ti_pipeline.core.http import MAX_RESPONSE_BYTES
from ti_pipeline.core.objectstore import ObjectStore, open_store
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.core.warehouse import PartitionBusy, Warehouse
from ti_pipeline.defs.config import fields_of, options_from
from ti_pipeline.defs.policies import no_retry
from ti_pipeline.threat_actors.client import ClientOptions
from ti_pipeline.vt_feed.broccoli.client import RetryPolicy
from ti_pipeline.vt_feed.load import LoadSettings


def env(name: str) -> EnvVar | int | None:
    """``EnvVar(name)`` (``EnvVar.int`` for an int setting) when ``name`` is set, else None: the table's default."""
    if not settings.is_set(name):
        return None
    return EnvVar.int(name) if settings.SETTINGS[name].kind == "int" else EnvVar(name)


def env_fields(options: type) -> dict[str, EnvVar | int | None]:
    """``env`` of every field of an option dataclass whose default is a setting (``settings.configured``)."""
    return {f.name: env(f.metadata["setting"]) for f in dataclasses.fields(options) if "setting" in f.metadata}


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
            from ti_pipeline.core.migrations import SchemaOutOfDate  # Alembic: only where a warehouse opens

            warehouse = Warehouse(settings.resolve("TI_WAREHOUSE_URL", self.url), batch_rows=self.batch_rows)
            try:
                warehouse.ensure_schema()
            except SchemaOutOfDate as exc:  # `ti-pipeline migrate` first; a retry would fail the same way
                raise no_retry(str(exc)) from None
            self._warehouse = warehouse
        return self._warehouse

    def import_policy(self) -> ImportPolicy:
        return ImportPolicy.parse(settings.text("TI_IMPORT_CLASSIFICATIONS", self.import_classifications))

    @contextmanager
    def partition_lock(self, asset_key: AssetKey, partition_key: str, run_id: str) -> Iterator[Warehouse]:
        """Hold ``Warehouse.partition_lock`` of one asset partition for this run; another run holding
        it fails the step at once, not retried (it would only meet the same holder)."""
        warehouse = self.get()
        try:
            with warehouse.partition_lock(asset_key.to_user_string(), partition_key, holder=f"run {run_id}"):
                yield warehouse
        except PartitionBusy as exc:
            raise no_retry(str(exc)) from None


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


class MalpediaResource(fields_of(ClientOptions, ConfigurableResource)):
    """The Malpedia REST API (``TI_MALPEDIA_URL``), within its request budget (Malpedia's published quota).

    Limits left unset come from ``TI_MALPEDIA_REQUESTS_PER_MINUTE`` / ``_PER_HOUR`` at run time, so a
    loopback server (tests, the demo) can lift them without touching the definitions. The other fields
    are the client's ``ClientOptions``.
    """

    url: str | None = None
    token: str | None = None
    requests_per_minute: int | None = None
    requests_per_hour: int | None = None
    concurrency: int = 4

    def budget(self, warehouse: Warehouse | None = None):
        """The request budget: with ``warehouse``, the one every run and process on it shares
        (``SharedRequestBudget``); without, this process's own."""
        from ti_pipeline.threat_actors.budget import RequestBudget, SharedRequestBudget

        per_minute = settings.integer("TI_MALPEDIA_REQUESTS_PER_MINUTE", self.requests_per_minute)
        per_hour = settings.integer("TI_MALPEDIA_REQUESTS_PER_HOUR", self.requests_per_hour)
        limits = [(per_minute, 60.0), (per_hour, 3600.0)]
        return RequestBudget(limits) if warehouse is None else SharedRequestBudget(warehouse, limits=limits)

    def client(self, warehouse: Warehouse | None = None):
        """A new client (use it as ``async with``); the token only ever goes into its request header."""
        from ti_pipeline.threat_actors.client import MalpediaClient

        return MalpediaClient(
            settings.resolve("TI_MALPEDIA_URL", self.url),
            token=self.token,
            budget=self.budget(warehouse),
            options=options_from(self, ClientOptions),
        )


class BroccoliResource(fields_of(RetryPolicy, ConfigurableResource)):
    """Broccoli's per-SHA1 classification objects (``TI_BROCCOLI_URI``: gs://, http(s):// or file://);
    the retry fields are the client's ``RetryPolicy``."""

    uri: str | None = None
    max_response_bytes: int = MAX_RESPONSE_BYTES
    """Largest classification body read (decompressed); a larger one is a rejected lookup, not read whole."""

    @cached_property
    def resolved_uri(self) -> str:
        return settings.resolve("TI_BROCCOLI_URI", self.uri)

    def client(self, concurrency: int = 500):
        """A new lookup client (one aiohttp session per use); tokens come from google-auth for gs://."""
        from ti_pipeline.vt_feed.broccoli.client import BroccoliClient

        return BroccoliClient(self.resolved_uri, policy=options_from(self, RetryPolicy), concurrency=concurrency,
                              max_response_bytes=self.max_response_bytes)


class LoaderResource(fields_of(LoadSettings, ConfigurableResource)):
    """How exported VT days reach ``ioc_file_hashes``: ``TI_LOADER`` = sql (default), lightning or import_into.

    The fields are ``LoadSettings``'; TiDB connection fields left unset come from ``TI_TIDB_*``, then
    from the warehouse URL; the password only from ``EnvVar("TI_TIDB_PASSWORD")`` (or the URL).
    """

    def load_settings(self, loader: str | None = None) -> LoadSettings:
        """The settings of one run; ``loader`` is the run config's choice, if any."""
        return options_from(self, LoadSettings, loader=loader)


def _store(setting: str) -> ObjectStoreResource:
    return ObjectStoreResource(setting=setting, uri=env(setting))


def build_resources() -> dict[str, ConfigurableResource]:
    """Every resource, its settings as ``EnvVar`` where set, the rest left to the settings table."""
    return {
        "warehouse": WarehouseResource(
            url=env("TI_WAREHOUSE_URL"), import_classifications=env("TI_IMPORT_CLASSIFICATIONS")
        ),
        "sage_dump": _store("TI_SAGE_DUMP_URI"),
        "vt_feed": _store("TI_VT_FEED_URI"),
        "export_store": _store("TI_EXPORT_URI"),
        "broccoli": BroccoliResource(uri=env("TI_BROCCOLI_URI")),
        "loader": LoaderResource(**env_fields(LoadSettings)),
        "submissions_lake": _store("TI_SUBMISSIONS_URI"),
        "malpedia": MalpediaResource(
            url=env("TI_MALPEDIA_URL"),
            token=env("TI_MALPEDIA_TOKEN"),
            requests_per_minute=env("TI_MALPEDIA_REQUESTS_PER_MINUTE"),
            requests_per_hour=env("TI_MALPEDIA_REQUESTS_PER_HOUR"),
        ),
        "submissions_private_key": PrivateKeyFileResource(
            setting="TI_SUBMISSIONS_PRIVATE_KEY_FILE", path=env("TI_SUBMISSIONS_PRIVATE_KEY_FILE")
        ),
    }
