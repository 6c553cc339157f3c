"""The one schema definition of every target table, for TiDB/MySQL and the embedded SQLite alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import DATETIME as MYSQL_DATETIME
from sqlalchemy.dialects.mysql import DOUBLE as MYSQL_DOUBLE
from sqlalchemy.dialects.mysql import FLOAT as MYSQL_FLOAT
from sqlalchemy.dialects.mysql import MEDIUMTEXT
from sqlalchemy.dialects.mysql import VARCHAR as MYSQL_VARCHAR

metadata = sa.MetaData()

FILE_CLASSIFICATIONS = (
    "RANSOMWARE",
    "MALTOOL",
    "HACKTOOL",
    "UNWANTED",
    "MALWARE",
    "SUSPICIOUS",
    "BLACKLIST",
    "AV_DETECTED",
    "INDIFFERENT",
    "UNKNOWN",
    "WHITELIST",
)
# Where a row came from; a curated TOKENS row outranks every automated source.
SOURCES = ("VIRUS_TOTAL", "MALWARE_BAZAAR", "INTERNAL", "SAGE_DUMP", "TOKENS")
SUBMISSION_STATES = ("SUCCESS", "NOT_SUPPORTED", "ERROR")


# DateTime and Float spelled out for TiDB/MySQL: a Dagster instance (held by every run) registers
# process-wide MySQL compile hooks for the generic types (DATETIME(6), FLOAT(32)); the explicit MySQL
# types have their own compilers, so the DDL is the same in every process.
DATETIME = sa.DateTime().with_variant(MYSQL_DATETIME(), "mysql", "mariadb")
FLOAT = sa.Float().with_variant(MYSQL_FLOAT(), "mysql", "mariadb")


def key_text(length: int) -> sa.String:
    """Text a natural key is made of, compared byte for byte on every warehouse: SQLite and TiDB do so
    by default; MySQL/MariaDB's default collation would make one row of keys that differ only in case or
    accents (two actor ids, two URLs of a customer list). Trailing blanks still compare equal (PAD SPACE,
    as on TiDB): the rules strip keys."""
    binary = MYSQL_VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin")
    return sa.String(length).with_variant(binary, "mysql", "mariadb")


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=True, create_constraint=False)


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", DATETIME, nullable=False, server_default=sa.func.current_timestamp()),
        sa.Column("updated_at", DATETIME, nullable=False, server_default=sa.func.current_timestamp()),
    ]


# Lists that can outgrow MySQL's TEXT (64 KiB: a family's reference URLs reach 64 KB in the shipped
# Malpedia snapshot alone; 70 engines' detection names come near it); MEDIUMTEXT (16 MiB) on TiDB/MySQL, plain TEXT on SQLite.
LONG_TEXT = sa.Text().with_variant(MEDIUMTEXT(), "mysql", "mariadb")


ioc_file_hashes = sa.Table(
    "ioc_file_hashes",
    metadata,
    sa.Column("sha256", sa.BINARY(32), primary_key=True),
    sa.Column("sha1", sa.BINARY(20)),
    sa.Column("md5", sa.BINARY(16)),
    sa.Column("classification", _enum("file_classification", FILE_CLASSIFICATIONS), nullable=False),
    sa.Column("source", _enum("file_source", SOURCES), nullable=False),
    sa.Column("detection_names", LONG_TEXT),
    sa.Column("scan_date", DATETIME),
    sa.Column("positives", sa.Integer),
    sa.Column("total", sa.Integer),
    sa.Column("first_seen", DATETIME),
    sa.Column("last_seen", DATETIME),
    *_timestamps(),
    sa.Index("ix_ioc_file_hashes_sha1", "sha1"),
    sa.Index("ix_ioc_file_hashes_md5", "md5"),
)

ioc_domains = sa.Table(
    "ioc_domains",
    metadata,
    sa.Column("domain", key_text(253), primary_key=True),
    sa.Column("classification", sa.String(32), nullable=False),
    sa.Column("source", _enum("domain_source", SOURCES), nullable=False),
    sa.Column("positives", sa.Integer),
    sa.Column("detected_urls", sa.Integer),
    sa.Column("malicious_type", sa.String(64)),
    sa.Column("first_seen", DATETIME),
    sa.Column("last_seen", DATETIME),
    *_timestamps(),
)

ioc_tokens = sa.Table(
    "ioc_tokens",
    metadata,
    sa.Column("token", key_text(255), primary_key=True),
    sa.Column("token_type", sa.String(16), nullable=False),
    # The response word (malware, whitelist, ...) and its optional ``;SUBTYPE`` suffix (ANTI_VIRUS, SHELL, ...).
    sa.Column("response", sa.String(32), nullable=False),
    sa.Column("subtype", sa.String(64)),
    sa.Column("malicious_type", sa.String(64)),
    sa.Column("source", sa.String(255)),
    sa.Column("link", sa.Text),
    *_timestamps(),
)

ioc_ips = sa.Table(
    "ioc_ips",
    metadata,
    sa.Column("address", key_text(45), primary_key=True),
    sa.Column("classification", sa.String(32), nullable=False),
    sa.Column("source", _enum("ip_source", SOURCES), nullable=False),
    sa.Column("malicious_type", sa.String(64)),
    sa.Column("link", sa.Text),
    *_timestamps(),
)

file_extension_classification = sa.Table(
    "file_extension_classification",
    metadata,
    sa.Column("extension", key_text(64), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("sources", sa.Text),
    *_timestamps(),
)


@dataclass(frozen=True)
class MergeRule:
    """When an incoming row may replace the stored one (``Warehouse.upsert`` turns it into SQL).

    ``newer_column``: only a row whose value there is at least the stored one replaces it (NULL stored
    loses), so loading inputs in any order ends in the same table. ``protected_source``: a stored row
    of that source is never replaced by a row of another source (curated entries outrank feeds).
    """

    newer_column: str | None = None
    protected_source: str | None = None


customer_ioc = sa.Table(
    "customer_ioc",
    metadata,
    sa.Column("org_id", key_text(64), primary_key=True),
    sa.Column("ioc_type", key_text(16), primary_key=True),
    sa.Column("value", key_text(255), primary_key=True),
    sa.Column("action", _enum("customer_action", ("BLOCK", "ALLOW")), nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("submission_id", sa.String(128), nullable=False),
    sa.Column("submitted_at", DATETIME, nullable=False),
    *_timestamps(),
)

submission_ledger = sa.Table(
    "submission_ledger",
    metadata,
    sa.Column("submission_id", key_text(128), primary_key=True),
    sa.Column("org_id", sa.String(64)),
    sa.Column("typetag", sa.String(64)),
    sa.Column("identity_hash", sa.String(64)),
    sa.Column("state", _enum("submission_state", SUBMISSION_STATES), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("skip", sa.Boolean, nullable=False, default=False),
    sa.Column("rows_written", sa.Integer, nullable=False, default=0),
    sa.Column("submitted_at", DATETIME),
    sa.Column("processed_at", DATETIME, nullable=False),
    sa.Index("ix_submission_ledger_identity", "identity_hash"),
)


# How a row merges with what the table already holds, whichever feed brings it (the dump load, and for
# ``ioc_file_hashes`` the VT load's merge too): the newest scan wins; curated TOKENS domains and IPs
# are never overwritten by an automated classification.
MERGE_RULES = {
    ioc_file_hashes.name: MergeRule(newer_column="scan_date"),
    ioc_domains.name: MergeRule(newer_column="last_seen", protected_source="TOKENS"),
    ioc_ips.name: MergeRule(protected_source="TOKENS"),
    ioc_tokens.name: MergeRule(),
    file_extension_classification.name: MergeRule(),
    # Per org, type and value the row of the latest submission wins, whatever order runs see them in.
    customer_ioc.name: MergeRule(newer_column="submitted_at"),
}


threat_actors = sa.Table(
    "threat_actors",
    metadata,
    sa.Column("actor_id", key_text(128), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("uuid", sa.String(36)),
    sa.Column("description", LONG_TEXT),
    sa.Column("country", sa.String(64)),
    sa.Column("synonyms", LONG_TEXT),
    sa.Column("refs", LONG_TEXT),
    sa.Column("families", LONG_TEXT),
    # Every meta field as canonical JSON (cfr-*, attribution-confidence, ...) and the galaxy relations.
    sa.Column("meta", LONG_TEXT),
    sa.Column("related", LONG_TEXT),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("removed", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", DATETIME, nullable=False),
    sa.Column("last_updated", DATETIME, nullable=False),
    # content_hash@ATT&CK data version the techniques were computed from; differs => re-enrich.
    sa.Column("enriched_with", sa.String(128)),
)

malware_families = sa.Table(
    "malware_families",
    metadata,
    sa.Column("family_id", key_text(128), primary_key=True),
    sa.Column("common_name", sa.String(255)),
    sa.Column("uuid", sa.String(36)),
    sa.Column("description", LONG_TEXT),
    sa.Column("alt_names", LONG_TEXT),
    sa.Column("attribution", LONG_TEXT),
    sa.Column("urls", LONG_TEXT),
    sa.Column("updated", sa.String(32)),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("removed", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", DATETIME, nullable=False),
    sa.Column("last_updated", DATETIME, nullable=False),
)

actor_techniques = sa.Table(
    "actor_techniques",
    metadata,
    sa.Column("actor_id", key_text(128), primary_key=True),
    sa.Column("technique_id", key_text(16), primary_key=True),
    sa.Column("technique_name", sa.String(255)),
    sa.Column("tactic", sa.String(255)),
    sa.Column("match_method", sa.String(32), nullable=False),
    sa.Column("confidence", FLOAT, nullable=False),
    sa.Column("attack_group", sa.String(255)),
)

# The last version of an external source that was synced completely (Malpedia's /api/get/version).
sync_state = sa.Table(
    "sync_state",
    metadata,
    sa.Column("source", key_text(64), primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("synced_at", DATETIME, nullable=False),
)

# Who holds an asset partition's lock (``Warehouse.partition_lock``): written by the holder once it
# has the lock, so a refused run can name it; the lock itself is a named lock (MySQL/TiDB) or a lock
# file (SQLite), which dies with its run. A killed run's row stays until the next holder replaces it.
partition_locks = sa.Table(
    "partition_locks",
    metadata,
    sa.Column("asset", key_text(128), primary_key=True),
    sa.Column("partition_key", key_text(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("acquired_at", DATETIME, nullable=False),
)

# A request budget shared by every run and process (Malpedia's quota; ``threat_actors/budget.py``):
# one row per service (its ``hold_until``, and the row every reservation locks first) and the start
# times of the requests reserved within the longest window, as seconds since the epoch.
EPOCH_SECONDS = sa.Double().with_variant(MYSQL_DOUBLE(asdecimal=False), "mysql", "mariadb")
request_budgets = sa.Table(
    "request_budgets",
    metadata,
    sa.Column("service", key_text(64), primary_key=True),
    sa.Column("hold_until", EPOCH_SECONDS, nullable=False),
)
request_budget_starts = sa.Table(
    "request_budget_starts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("started_at", EPOCH_SECONDS, nullable=False),
    sa.Index("ix_request_budget_starts_service_started_at", "service", "started_at"),
)

# Inputs that could not be used, with where they came from and why.
quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("asset", sa.String(128), nullable=False),
    sa.Column("partition_key", sa.String(64), nullable=False),
    sa.Column("source", sa.String(512), nullable=False),
    sa.Column("byte_offset", sa.BigInteger),
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("excerpt", sa.Text),
    sa.Column("recorded_at", DATETIME, nullable=False, server_default=sa.func.current_timestamp()),
    sa.Index("ix_quarantine_asset_partition", "asset", "partition_key"),
)


class TextLimit(NamedTuple):
    """The longest value a string column holds on every warehouse: characters, and UTF-8 bytes for TEXT."""

    chars: int
    utf8_bytes: int | None = None


def _text_limit(column: sa.Column) -> TextLimit | None:
    kind = column.type
    if isinstance(kind, sa.Enum):
        return None
    if isinstance(kind, sa.String) and kind.length:
        return TextLimit(kind.length)
    if kind is LONG_TEXT:
        return TextLimit(16 << 20, (16 << 20) - 1)
    if isinstance(kind, sa.Text):
        return TextLimit(65535, 65535)
    return None


# Per table, the longest string each column holds: a longer value is rejected, never truncated.
TEXT_LIMITS: dict[str, dict[str, TextLimit]] = {
    table.name: {c.name: limit for c in table.columns if (limit := _text_limit(c)) is not None}
    for table in metadata.sorted_tables
}


# Per-day staging tables of the VT load: the Parquet export schemas (``ti_pipeline.core.exports``) as
# tables, so LOAD DATA, Lightning and IMPORT INTO fill them column for column. They live in their
# own MetaData: the migrations never create them, the loader creates and drops one per load.
def _staging_type(arrow_type) -> sa.types.TypeEngine:
    import pyarrow as pa

    if pa.types.is_fixed_size_binary(arrow_type):
        return sa.BINARY(arrow_type.byte_width)
    if pa.types.is_int16(arrow_type):
        return sa.SmallInteger()
    if pa.types.is_integer(arrow_type):
        return sa.Integer()
    if pa.types.is_timestamp(arrow_type):
        return DATETIME
    if pa.types.is_string(arrow_type):
        return LONG_TEXT  # as long as the target's longest text (detection_names): staging never cuts
    raise TypeError(f"no staging column type for {arrow_type}")


def staging_table(name: str, arrow_schema, primary_key: str, *extra: sa.Column) -> sa.Table:
    """A table with one column per field of ``arrow_schema`` (same names), keyed by ``primary_key``,
    then the ``extra`` columns."""
    columns = [
        sa.Column(f.name, _staging_type(f.type), primary_key=f.name == primary_key, nullable=f.name != primary_key)
        for f in arrow_schema
    ]
    return sa.Table(name, sa.MetaData(), *columns, *extra)


def vt_load_staging(day_yyyymmdd: str) -> tuple[sa.Table, sa.Table]:
    """The VT reports and Broccoli sidecar staging tables of one export day (``YYYYMMDD``)."""
    from ti_pipeline.core.exports import BROCCOLI_CLASSIFICATIONS, VT_FILE_REPORTS

    if not (len(day_yyyymmdd) == 8 and day_yyyymmdd.isdigit()):
        raise ValueError(f"not a YYYYMMDD day: {day_yyyymmdd!r}")
    return (
        staging_table(f"stage_vt_file_reports_{day_yyyymmdd}", VT_FILE_REPORTS, "sha256"),
        staging_table(f"stage_broccoli_{day_yyyymmdd}", BROCCOLI_CLASSIFICATIONS, "sha1"),
    )


def vt_classified_staging(day_yyyymmdd: str) -> sa.Table:
    """The ``sql`` loader's one staging table of a day (same name as the reports table above): the
    report columns the merge reads (not ``source_package``) and each row's incoming classification
    (a curated token's, else Broccoli's; NULL for neither) and source (TOKENS or VIRUS_TOTAL),
    computed in process, so the merge joins neither a sidecar table nor ``ioc_tokens``."""
    import pyarrow as pa

    from ti_pipeline.core.exports import VT_FILE_REPORTS

    reports, _sidecar = vt_load_staging(day_yyyymmdd)
    merged_fields = pa.schema([f for f in VT_FILE_REPORTS if f.name != "source_package"])
    classification = sa.Column("classification", ioc_file_hashes.c.classification.type)
    source = sa.Column("source", ioc_file_hashes.c.source.type)
    return staging_table(reports.name, merged_fields, "sha256", classification, source)
