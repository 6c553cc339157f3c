"""Every environment name the project uses, in one table, and the only module that reads the environment.

Each entry states the name's kind, whether it is a secret, its default (a value, a place under
``TI_DATA_DIR``, or the rule its reader derives it by) and one line on what it is for. A name left
unset falls back to its default, so a laptop with nothing installed runs on a SQLite warehouse and
folders under ``TI_DATA_DIR``. docs/configuration.md holds ``markdown_table()`` verbatim and a test
checks that no ``TI_*`` name in the repository is missing here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ti_pipeline.core.values import PRODUCTION_CLASSIFICATIONS

Kind = Literal["path", "url", "int", "str", "list"]
# Who the name is for: the pipeline's own code, Dagster (its instance and the deploy/ files), the tests.
Scope = Literal["pipeline", "dagster", "tests"]


@dataclass(frozen=True)
class UnderDataDir:
    """A default that lives under ``TI_DATA_DIR``: ``relative`` as a path, a ``file://`` URI or a SQLite URL."""

    relative: str
    form: Literal["path", "file_uri", "sqlite_url"] = "path"

    def value(self) -> str:
        path = data_dir() / self.relative
        if self.form == "file_uri":
            return path.as_uri()
        return f"sqlite:///{path}" if self.form == "sqlite_url" else str(path)

    def __str__(self) -> str:
        prefix = {"path": "", "file_uri": "file://", "sqlite_url": "sqlite:///"}[self.form]
        return f"`{prefix}$TI_DATA_DIR/{self.relative}`"


@dataclass(frozen=True)
class Rule:
    """A default no single value states: its reader derives it (``text`` says how, for the docs)."""

    text: str

    def value(self) -> None:
        return None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Setting:
    """One environment name: what it is, its default, and who reads it."""

    name: str
    kind: Kind
    description: str
    default: str | int | UnderDataDir | Rule | None = None
    secret: bool = False
    """Only ever passed as ``EnvVar`` and never logged (a URL may carry a password)."""
    scope: Scope = "pipeline"
    example: str = ""
    """A production value, for the docs."""

    def default_value(self) -> str | int | None:
        return self.default.value() if isinstance(self.default, UnderDataDir | Rule) else self.default


_PRODUCTION_SET = ",".join(PRODUCTION_CLASSIFICATIONS)
_TABLE = (
    Setting("TI_DATA_DIR", "path", "home of the embedded defaults (SQLite warehouse, folders as buckets, sample data)",
            "./.ti_data", example="—"),
    Setting("TI_WAREHOUSE_URL", "url", "SQLAlchemy URL of the warehouse; TLS options in the query string",
            UnderDataDir("warehouse.sqlite", "sqlite_url"), secret=True,
            example="`mysql+pymysql://ti@tidb:4000/threat_intel?ssl_ca=/etc/ssl/tidb-ca.pem&ssl_verify_cert=true`"),
    Setting("TI_SAGE_DUMP_URI", "url", "root of the Sage dump, shard folders in either layout (see below)",
            UnderDataDir("sage_dump", "file_uri"), example="`gs://sage_prod_dump`"),
    Setting("TI_SAGE_SHARD_DIR", "str", "a shard's folder as a template holding `{shard}` once, instead of discovery "
            "(run config `shard_dir` overrides it)", Rule("found in either layout"),
            example="`cr-mongo-shard-{shard}.cybereason.net`"),
    Setting("TI_IMPORT_CLASSIFICATIONS", "list", "classifications that enter `ioc_file_hashes` from either feeder: "
            "ENUM values or `ALL` (resource field `warehouse.import_classifications` overrides it)",
            _PRODUCTION_SET, example="the default"),
    Setting("TI_VT_FEED_URI", "url", "root of the VirusTotal feed, `{root}/{YYYYMMDD}/{YYYYMMDD}T{HHMM}` "
            "(resource `vt_feed`)", UnderDataDir("vt_feed", "file_uri"), example="`gs://vt-file-feeder-by-date`"),
    Setting("TI_EXPORT_URI", "url", "where the pipeline writes Parquet, `{root}/{dataset}/date=YYYY-MM-DD/` "
            "(resource `export_store`)", UnderDataDir("export", "file_uri"), example="`gs://<export-bucket>`"),
    Setting("TI_STEP_RETRIES", "int", "how many times Dagster retries a failed asset step (30 s, 90 s, 210 s apart, "
            "+/- 30 s); 0 turns step retries off", 3, example="the default"),
    Setting("TI_VT_FRESHNESS_DEADLINE_CRON", "str", "cron (UTC) by which the day two days back (D-2) of "
            "`vt_feed/vt_file_reports` and `vt_feed/ioc_file_hashes` must be materialized, else their freshness "
            "check fails", "0 6 * * *", example="the default (the export starts at 02:00 UTC)"),
    Setting("TI_BROCCOLI_URI", "url", "prefix of Broccoli's per-SHA1 classification objects, `{prefix}/{sha1}`: "
            "`gs://` (GCS JSON API), `http(s)://` or `file://` (resource `broccoli`)", UnderDataDir("broccoli", "file_uri"),
            example="`gs://broccoli-enricher/latest-reports`"),
    Setting("TI_SUBMISSIONS_URI", "url", "lake of encrypted organisation submissions, `blobs/<id>.bin` + "
            "`meta/<id>.json` (resource `submissions_lake`)", UnderDataDir("submissions", "file_uri"),
            example="`gs://<lake-bucket>/submissions`"),
    Setting("TI_SUBMISSIONS_PRIVATE_KEY_FILE", "path", "the archive's RSA private key, PEM, mode 0600 "
            "(resource `submissions_private_key`; `ti-pipeline sample-data` makes it when missing)",
            UnderDataDir("keys/submissions_private.pem"), example="a mounted secret file, e.g. `/var/run/secrets/ti/submissions_private.pem`"),
    Setting("TI_MALPEDIA_URL", "url", "Malpedia API base (resource `malpedia`)",
            "https://malpedia.caad.fkie.fraunhofer.de/api",
            example="the default; `http://127.0.0.1:8765/api` for `ti-pipeline malpedia-server`"),
    Setting("TI_MALPEDIA_TOKEN", "str", "optional API token, sent only as `Authorization: apitoken <TOKEN>`",
            secret=True, example="a secret from the environment"),
    Setting("TI_MALPEDIA_REQUESTS_PER_MINUTE", "int", "request budget of the Malpedia client per minute", 60,
            example="the default (Malpedia's published quota)"),
    Setting("TI_MALPEDIA_REQUESTS_PER_HOUR", "int", "request budget of the Malpedia client per hour", 2000,
            example="the default (Malpedia's published quota)"),
    Setting("TI_LOADER", "str", "how exported VT days reach `ioc_file_hashes`: `sql`, `lightning` or `import_into` "
            "(resource `loader`; run config `loader` overrides it)", "sql", example="`lightning`"),
    Setting("TI_LIGHTNING_BIN", "str", "the TiDB Lightning command, split like a shell would (`tidb-lightning`, "
            "`tiup tidb-lightning`)", "tidb-lightning",
            example="`/opt/tidb-toolkit/bin/tidb-lightning`"),
    Setting("TI_LIGHTNING_SORTED_KV_DIR", "path", "Lightning local-backend scratch, one sub-folder per staging "
            "table (fast local SSD, about the day's size)", UnderDataDir("lightning-sorted-kv"),
            example="`/mnt/nvme/sorted-kv`"),
    Setting("TI_TIDB_HOST", "str", "the TiDB server Lightning and IMPORT INTO talk to",
            Rule("the host of `TI_WAREHOUSE_URL`"), example="`tidb.internal`"),
    Setting("TI_TIDB_PORT", "int", "its SQL port", Rule("the port of `TI_WAREHOUSE_URL`"), example="`4000`"),
    Setting("TI_TIDB_USER", "str", "its user", Rule("the user of `TI_WAREHOUSE_URL`"), example="`ti_loader`"),
    Setting("TI_TIDB_PASSWORD", "str", "its password; written only into Lightning's 0600 task file (deleted after "
            "the run), masked in every logged line", Rule("the password of `TI_WAREHOUSE_URL`, else empty"),
            secret=True, example="a secret from the environment"),
    Setting("TI_TIDB_STATUS_PORT", "int", "TiDB status port, for Lightning's `[tidb]` section", 10080,
            example="`10080`"),
    Setting("TI_TIDB_PD_ADDR", "str", "PD address, for Lightning's `[tidb]` section", example="`pd-0.internal:2379`"),
    Setting("TI_CODE_REPOSITORY_URL", "url", "GitHub or GitLab URL of this repository: each asset's code reference "
            "links to its file there", Rule("unset: references are local file paths"),
            example="`https://github.com/<org>/ti_pipeline`"),
    Setting("TI_CODE_REPOSITORY_BRANCH", "str", "branch (or tag) the code references link to", "main",
            example="the deployed release tag"),
    Setting("TI_CODE_REPOSITORY_PATH", "str", "folder of this project inside that repository",
            Rule("the repository's root"), example="`pipelines/ti_pipeline`"),
    Setting("DAGSTER_PG_URL", "url", "Postgres storage of the production instance, a `postgresql+psycopg2://` URL "
            "(deploy/dagster.production.yaml)", secret=True, scope="dagster", example="a secret from the environment"),
    Setting("TI_PIPELINE_IMAGE", "str", "image of the run pods the K8s run launcher starts "
            "(deploy/dagster.production.yaml)", scope="dagster", example="`registry/ti-pipeline:<version>`"),
    Setting("TI_COMPUTE_LOGS_BUCKET", "str", "GCS bucket the production instance keeps every step's stdout/stderr in "
            "(`GCSComputeLogManager`, deploy/dagster.production.yaml)", scope="dagster", example="`<ops-bucket>`"),
    Setting("TI_COMPUTE_LOGS_PREFIX", "str", "object prefix of those logs in the bucket "
            "(deploy/dagster.production.yaml)", scope="dagster", example="`dagster/compute-logs`"),
    Setting("TI_CELERY_BROKER", "url", "Celery broker of the workers (deploy/celery.yaml)", secret=True,
            scope="dagster", example="`redis://redis:6379/0`"),
    Setting("TI_CELERY_BACKEND", "url", "Celery result backend (deploy/celery.yaml)", secret=True, scope="dagster",
            example="`redis://redis:6379/1`"),
    Setting("DAGSTER_HOME", "path", "Dagster's instance folder; `ti-pipeline demo` keeps its runs there",
            Rule("`make`: `$TI_DATA_DIR/dagster_home`; unset: the demo uses an ephemeral instance"),
            scope="dagster", example="set by the deployment"),
    Setting("TI_FAILPOINTS", "list", "comma-separated `name=kill[@N]`: the process SIGKILLs itself the N-th time it "
            "passes the named point (`name=stop[@N]`: SIGSTOPs itself there) (`sage.block_written`, `vt_export.package_decompressed`, "
            "`vt_export.part_written`, `load.merge_chunk`)", scope="tests", example="unset in production"),
    Setting("STORAGE_EMULATOR_HOST", "url", "GCS emulator endpoint; `gs://` stores then use anonymous credentials",
            scope="tests", example="unset"),
    Setting("TI_TEST_MYSQL_URL", "url", "MySQL-protocol server of the tests and `bench/load.py` (no database)",
            "mysql+pymysql://root@127.0.0.1:3306", scope="tests", example="unset"),
    Setting("TI_UI_SCREENSHOTS", "path", "folder the UI end-to-end test writes its screenshots to "
            "(`docs/images` refreshes the docs' pictures)", Rule("the test's tmp folder"), scope="tests",
            example="unset"),
)
SETTINGS: dict[str, Setting] = {s.name: s for s in _TABLE}


def _setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"{name} is not in the settings table (ti_pipeline/core/settings.py)") from None


def _raw(name: str, explicit: str | int | None) -> str | int | None:
    """``explicit`` when given, else the environment, else the table's default (None: unset, no default)."""
    setting = _setting(name)
    if explicit is not None and explicit != "":
        return explicit
    raw = os.environ.get(name)
    if not raw:
        return setting.default_value()
    if setting.kind != "int":
        return raw
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None


def text(name: str, explicit: str | None = None) -> str | None:
    """A text setting: ``explicit``, else the environment, else its default (None when it has none)."""
    value = _raw(name, explicit)
    return None if value is None else str(value)


def resolve(name: str, explicit: str | None = None) -> str:
    """A text setting that always has a value (its default is a value or a place under TI_DATA_DIR)."""
    value = text(name, explicit)
    if value is None:
        raise KeyError(f"{name} is not set and has no default")
    return value


def integer(name: str, explicit: int | None = None) -> int | None:
    """An integer setting: ``explicit``, else the environment, else its default."""
    value = _raw(name, explicit)
    return None if value is None else int(value)


def is_set(name: str) -> bool:
    """Whether the environment holds a value for ``name`` (so a resource can take it as ``EnvVar``)."""
    return bool(os.environ.get(_setting(name).name))


def default(name: str) -> str | int | None:
    """The table's default of ``name`` alone, not the environment: a pure package's own default."""
    return _setting(name).default_value()


def data_dir() -> Path:
    """``TI_DATA_DIR`` as an absolute path: the root of every default under it."""
    return Path(resolve("TI_DATA_DIR")).resolve()


def configured(name: str) -> Any:
    """A dataclass field whose default is the setting's configured value, read when the dataclass is
    made (so a run sees the environment of its process). A secret is not read here: it defaults to
    None, stays out of ``repr`` and reaches a run only as the Dagster resource's ``EnvVar``."""
    setting = _setting(name)
    metadata = {"setting": name}
    if setting.secret:
        return dataclasses.field(default=None, repr=False, metadata=metadata)
    read = integer if setting.kind == "int" else text
    return dataclasses.field(default_factory=lambda: read(name), metadata=metadata)


@contextmanager
def override(values: Mapping[str, str]) -> Iterator[None]:
    """Set table names in the environment for the block (child processes see them too), then restore them."""
    saved = {_setting(name).name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def markdown_table() -> str:
    """The table as docs/configuration.md shows it (a test keeps the two equal)."""
    lines = [
        "| name | for | kind | secret | default | meaning | production |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in _TABLE:
        shown = s.default if isinstance(s.default, UnderDataDir | Rule) else f"`{s.default}`" if s.default else "—"
        secret = "yes" if s.secret else ""
        lines.append(f"| `{s.name}` | {s.scope} | {s.kind} | {secret} | {shown} | {s.description} | {s.example} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # the table for docs/configuration.md
    print(markdown_table(), end="")
