"""Manifests as the loaders read them: only parts of the partition, never anything else."""

from __future__ import annotations

import json

import pytest

from ti_pipeline.vt_feed.load.exports_reader import ExportPart, IncompleteExport, parse_manifest

PREFIX = "vt_file_reports/date=2024-01-01"


def parse(manifest: object):
    return parse_manifest(json.dumps(manifest).encode(), "vt_file_reports", "2024-01-01")


def test_full_and_bare_part_names_are_read_with_rows_and_generation():
    parts, rows = parse({"parts": [{"name": f"{PREFIX}/part-00000.parquet", "rows": 3, "generation": 11}, {"name": "part-00001.parquet", "rows": 2}], "rows": 5})
    assert parts == (ExportPart(f"{PREFIX}/part-00000.parquet", 3, 11), ExportPart(f"{PREFIX}/part-00001.parquet", 2, None))
    assert rows == 5


@pytest.mark.parametrize(
    "name",
    [
        "vt_file_reports/date=2024-01-02/part-00000.parquet",
        f"{PREFIX}/../date=2024-01-02/part-00000.parquet",
        f"{PREFIX}/sub/part-00000.parquet",
        f"{PREFIX}/_SUCCESS",
        "/etc/passwd",
    ],
)
def test_a_manifest_listing_anything_else_is_refused(name):
    with pytest.raises(IncompleteExport):
        parse({"parts": [{"name": name, "rows": 1}], "rows": 1})


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"rows": 1}', b'{"parts": [{"rows": 1}]}'])
def test_what_is_not_a_manifest_is_refused(raw):
    with pytest.raises(IncompleteExport):
        parse_manifest(raw, "vt_file_reports", "2024-01-01")
