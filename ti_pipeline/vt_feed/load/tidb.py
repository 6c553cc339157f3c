"""Where the TiDB-only loaders reach the cluster, and how they name the export to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import sqlalchemy as sa

from ti_pipeline.vt_feed.load.base import LoadSettings


@dataclass(frozen=True)
class TidbTarget:
    host: str
    port: int
    user: str
    database: str
    password: str = field(default="", repr=False)


def tidb_target(url: sa.URL, settings: LoadSettings) -> TidbTarget:
    """The warehouse URL's server and database, each field overridable by the loader settings."""
    if not url.database:
        raise ValueError(f"the warehouse URL {url.render_as_string(hide_password=True)} names no database")
    return TidbTarget(
        host=settings.tidb_host or url.host or "127.0.0.1",
        port=int(settings.tidb_port or url.port or 4000),
        user=settings.tidb_user or url.username or "root",
        database=url.database,
        password=settings.tidb_password or url.password or "",
    )


def source_location(uri: str) -> str:
    """An export URI as TiDB's external-storage syntax wants it: ``gs://...`` as is, ``file://`` as a path."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return uri.rstrip("/")
