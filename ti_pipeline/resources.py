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

from ti_pipeline import settings
from ti_pipeline.objectstore import ObjectStore, open_store
from ti_pipeline.warehouse import Warehouse


def from_env(name: str) -> EnvVar | None:
    """``EnvVar(name)`` when it is set (so the UI shows where a value comes from), else None."""
    return EnvVar(name) if os.environ.get(name) else None


class WarehouseResource(ConfigurableResource):
    """The Phoenix warehouse: TiDB/MySQL in production, SQLite under TI_DATA_DIR by default."""

    url: str | None = None
    batch_rows: int = 500
    _warehouse: Warehouse | None = PrivateAttr(default=None)

    def get(self) -> Warehouse:
        if self._warehouse is None:
            self._warehouse = Warehouse(settings.resolve("TI_WAREHOUSE_URL", self.url), batch_rows=self.batch_rows)
            self._warehouse.create_schema()
        return self._warehouse


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
