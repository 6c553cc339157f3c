"""The ``lightning`` loader: a generated TiDB Lightning task per staging table, run as a subprocess.

``lightning_config`` is a pure function of the task, so tests compare the TOML exactly. The file
holds the password (mode 0600 in a private work folder, deleted after the run); what is logged is
``redacted`` and every line the tool prints is masked too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from ti_pipeline.core.exports import DayExport
from ti_pipeline.vt_feed.load.base import StageRequest, StageResult
from ti_pipeline.vt_feed.load.runner import MASK, run_streaming
from ti_pipeline.vt_feed.load.tidb import TidbTarget, source_location, tidb_target


@dataclass(frozen=True)
class LightningTask:
    data_source_dir: str
    part_files: tuple[str, ...]  # file names inside data_source_dir, exactly the manifest's parts
    target: TidbTarget
    table: str
    sorted_kv_dir: str
    checkpoint_dsn: str
    status_port: int
    pd_addr: str | None = None


LIGHTNING_SQL_MODE = "ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"no TOML form for {value!r}")


def _table(header: str, values: dict[str, object]) -> str:
    lines = [header] + [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines)


def file_pattern(part_files: tuple[str, ...]) -> str:
    """A routing regex that matches exactly the listed part files (nothing an aborted export left)."""
    return "^(?:" + "|".join(re.escape(name) for name in part_files) + ")$"


def lightning_config(task: LightningTask) -> str:
    """The TOML task config: local backend, listed Parquet parts routed to the staging table."""
    sections = [
        # max-error 0: a value the column cannot hold stops the import (the staged rows passed the value rules).
        _table("[lightning]", {"level": "info", "file": "-", "check-requirements": True, "max-error": 0}),
        _table(
            "[checkpoint]",
            {"enable": True, "driver": "file", "dsn": task.checkpoint_dsn, "keep-after-success": "remove"},
        ),
        # The export is deduplicated per day: a repeated key means a broken export, so fail loudly.
        _table("[conflict]", {"strategy": "error"}),
        _table("[tikv-importer]", {"backend": "local", "sorted-kv-dir": task.sorted_kv_dir}),
        _table("[mydumper]", {"data-source-dir": task.data_source_dir, "no-schema": True}),
        _table(
            "[[mydumper.files]]",
            {"pattern": file_pattern(task.part_files), "schema": task.target.database, "table": task.table, "type": "parquet"},
        ),
        _table(
            "[tidb]",
            {
                "host": task.target.host,
                "port": task.target.port,
                "user": task.target.user,
                "password": task.target.password,
                "status-port": task.status_port,
                "pd-addr": task.pd_addr,
                # Strict: Lightning's default mode would truncate an over-long or out-of-range value silently.
                "sql-mode": LIGHTNING_SQL_MODE,
            },
        ),
        _table("[post-restore]", {"checksum": "required", "analyze": "off"}),
    ]
    return "\n\n".join(sections) + "\n"


def redacted(task: LightningTask) -> str:
    """The config as it may be logged: the password masked."""
    return lightning_config(replace(task, target=replace(task.target, password=MASK if task.target.password else "")))


def lightning_task(request: StageRequest, export: DayExport, table: str, work_dir: Path) -> LightningTask:
    settings = request.settings
    return LightningTask(
        data_source_dir=source_location(request.store.url_of(export.prefix)),
        part_files=tuple(p.file_name for p in export.parts),
        target=tidb_target(request.warehouse.engine.url, settings),
        table=table,
        sorted_kv_dir=str(Path(settings.sorted_kv_dir) / table),
        checkpoint_dsn=str(work_dir / f"{table}.checkpoint.pb"),
        status_port=settings.tidb_status_port,
        pd_addr=settings.pd_addr,
    )


class LightningStager:
    name = "lightning"
    shortfall_reason = "not_imported_by_lightning"
    classifies = False

    def stage(self, request: StageRequest) -> StageResult:
        settings = request.settings
        result = StageResult(read=request.reports.rows)
        root = Path(settings.work_dir) if settings.work_dir else None
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix="ti-lightning-", dir=root))
        try:
            for index, (export, table) in enumerate(
                ((request.reports, request.reports_table), (request.sidecar, request.sidecar_table))
            ):
                if not export.parts:
                    continue
                task = lightning_task(request, export, table.name, work_dir)
                # The staging table was just re-created, so a checkpoint of an earlier run is stale.
                Path(task.checkpoint_dsn).unlink(missing_ok=True)
                shutil.rmtree(task.sorted_kv_dir, ignore_errors=True)
                config = work_dir / f"{table.name}.toml"
                fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(lightning_config(task))
                request.log.info(f"tidb-lightning task for {table.name}:\n{redacted(task)}")
                run = run_streaming(
                    [*shlex.split(settings.lightning_bin), "--config", str(config)],
                    log=request.log,
                    timeout=settings.timeout_seconds,
                    secrets=[task.target.password],
                    what="tidb-lightning",
                )
                config.unlink(missing_ok=True)
                result.figures["lightning_runs"] += 1
                result.figures["lightning_log_lines"] += run.lines
                request.event("staged_batch", index)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        return result
