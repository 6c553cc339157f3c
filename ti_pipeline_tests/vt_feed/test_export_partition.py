"""The VT export's partition as its two readers see it: the Broccoli sidecar and the loader read the
manifest the export published through the one reader of ``core.exports``, and both refuse a day
whose listed part is missing with the one ``IncompleteExport``."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import pytest

from ti_pipeline.core import exports
from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.sample_data.vt import write_vt_feed
from ti_pipeline.vt_feed.broccoli import sidecar
from ti_pipeline.vt_feed.export import DaySummary, ExportOptions, PackagePool, export_day
from ti_pipeline.vt_feed.load import LoadSettings, load_day
from ti_pipeline_tests.vt_feed.load.conftest import EVERYTHING

DAY = "2020-11-01"
NOW = datetime(2020, 11, 2)


def exported_day(tmp_path: Path) -> tuple[LocalStore, DaySummary]:
    """The day exported in several parts, with an empty Broccoli sidecar beside it."""
    feed, store = LocalStore(tmp_path / "feed"), LocalStore(tmp_path / "export")
    write_vt_feed(feed, days=(DAY,))
    with PackagePool(1) as pool:
        summary = export_day(feed, store, DAY, pool, ExportOptions(workers=1, rows_per_part=25, row_group_rows=25), now=NOW)
    sidecar.publish(store, DAY, sidecar.CHECKPOINT_SCHEMA.empty_table())
    return store, summary


def load(warehouse, store: LocalStore):
    return load_day(warehouse, store, DAY, LoadSettings(), log=logging.getLogger("test.load"),
                    quarantine=lambda records: None, policy=EVERYTHING)


def test_the_exports_manifest_is_read_by_the_sidecar_and_the_loader_through_the_one_reader(tmp_path, warehouse, monkeypatch):
    store, summary = exported_day(tmp_path)
    document = json.loads(store.read_bytes(exports.success_name("vt_file_reports", DAY)))
    assert (document["dataset"], document["date"], "day" in document) == ("vt_file_reports", DAY, False)
    assert len(summary.parts) > 1
    read: list[str] = []
    parse = exports.parse_manifest
    monkeypatch.setattr(exports, "parse_manifest", lambda raw, dataset, day: read.append(dataset) or parse(raw, dataset, day))

    sha1s = sidecar.export_sha1s(store, DAY)
    assert read == ["vt_file_reports"]
    assert (sha1s.rows, sha1s.parts) == (summary.accounting.written, len(summary.parts))

    result = load(warehouse, store)
    assert read == ["vt_file_reports", "vt_file_reports", "broccoli_classifications"]
    assert result.reports.parts == tuple(summary.parts)
    assert result.accounting.read == result.reports.rows == summary.accounting.written
    assert result.accounting.written == summary.accounting.written
    assert result.reports.manifest.details["accounting"] == summary.accounting.as_dict()


def test_a_missing_part_is_an_incomplete_export_for_the_sidecar_and_the_loader(tmp_path, warehouse):
    store, summary = exported_day(tmp_path)
    store.delete(summary.parts[1].name)
    missing = r"part-00001\.parquet is listed in its manifest but missing"
    with pytest.raises(exports.IncompleteExport, match=missing):
        sidecar.export_sha1s(store, DAY)
    with pytest.raises(exports.IncompleteExport, match=missing):
        load(warehouse, store)
