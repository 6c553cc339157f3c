"""VT feed packages shaped like ``gs://vt-file-feeder-by-date``, quirks included.

A few packages per sample day at scattered minutes (so most minutes are missing, as the pipeline must
tolerate), v2 (bzip2 tar, one NDJSON member of allinfo reports) and v3 (bzip2 NDJSON of bare file
objects), the same files rescanned within a day and across days with different scan dates, reports
with ``positives`` 0, malformed lines and one truncated package. The same seed writes the same bytes.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import random
import tarfile
from datetime import UTC, date, datetime, timedelta

from ti_pipeline.objectstore import ObjectStore
from ti_pipeline.sample_data.sage import ENGINES, FAMILIES

SAMPLE_DAYS = ("2020-11-01", "2020-11-02", "2020-11-03")


def file_hashes(index: int) -> tuple[str, str, str]:
    """(sha256, sha1, md5) of a sample file, stable for an index."""
    seed = f"ti-pipeline sample file {index}".encode()
    return hashlib.sha256(seed).hexdigest(), hashlib.sha1(seed).hexdigest(), hashlib.md5(seed).hexdigest()


def v2_report(
    index: int,
    scan_date: datetime,
    detected: dict[str, str],
    *,
    engines: list[str] = ENGINES,
    extra: dict | None = None,
) -> dict:
    """A v2 allinfo report: every engine in ``scans``, the ``detected`` ones with their result."""
    sha256, sha1, md5 = file_hashes(index)
    update = scan_date.strftime("%Y%m%d")
    scans = {
        engine: {
            "detected": engine in detected,
            "version": f"{1 + i % 9}.{i % 7}.{i}",
            "result": detected.get(engine),
            "update": update,
        }
        for i, engine in enumerate(engines)
    }
    report = {
        "scans": scans,
        "scan_id": f"{sha256}-{int(scan_date.timestamp())}",
        "sha1": sha1,
        "resource": sha256,
        "response_code": 1,
        "scan_date": scan_date.strftime("%Y-%m-%d %H:%M:%S"),
        "permalink": f"https://www.virustotal.com/gui/file/{sha256}/detection/f-{sha256}-{int(scan_date.timestamp())}",
        "verbose_msg": "Scan finished, information embedded",
        "total": len(engines),
        "positives": len(detected),
        "sha256": sha256,
        "md5": md5,
        "type": "Win32 EXE",
        "size": 1024 + index * 37,
    }
    if extra:
        report.update(extra)
    return report


def v3_object(index: int, scan_date: datetime, detected: dict[str, str], *, engines: list[str] = ENGINES) -> dict:
    """A v3 file object (``last_analysis_*``) for the same file and scan."""
    sha256, sha1, md5 = file_hashes(index)
    results = {
        engine: {
            "category": "malicious" if engine in detected else "undetected",
            "engine_name": engine,
            "engine_version": f"{1 + i % 9}.{i % 7}.{i}",
            "result": detected.get(engine),
            "method": "blacklist",
            "engine_update": scan_date.strftime("%Y%m%d"),
        }
        for i, engine in enumerate(engines)
    }
    return {
        "id": sha256,
        "type": "file",
        "links": {"self": f"https://www.virustotal.com/api/v3/files/{sha256}"},
        "attributes": {
            "sha256": sha256,
            "sha1": sha1,
            "md5": md5,
            "size": 1024 + index * 37,
            "type_description": "Win32 EXE",
            "last_analysis_date": int(scan_date.timestamp()),
            "last_analysis_stats": {
                "malicious": len(detected),
                "suspicious": 0,
                "undetected": len(engines) - len(detected),
                "harmless": 0,
                "timeout": 0,
            },
            "last_analysis_results": results,
        },
    }


def v2_package(lines: list[bytes], member: str = "file-feed.json") -> bytes:
    """A bzip2 tar with one NDJSON member (fixed header fields, so the bytes are reproducible)."""
    body = b"".join(line + b"\n" for line in lines)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = len(body), 1604188800, 0o644
        tar.addfile(info, io.BytesIO(body))
    return bz2.compress(buffer.getvalue(), 9)


def v3_package(lines: list[bytes]) -> bytes:
    return bz2.compress(b"".join(line + b"\n" for line in lines), 9)


def package_name(day: date, minute: int) -> str:
    folder = day.strftime("%Y%m%d")
    return f"{folder}/{folder}T{minute // 60:02d}{minute % 60:02d}"


def _detections(rng: random.Random, positives: int) -> dict[str, str]:
    engines = rng.sample(ENGINES, positives)
    family = rng.choice(FAMILIES)
    return {engine: f"{family}.{rng.randint(1, 999)}" for engine in engines}


def _quirk_lines(day: date) -> list[bytes]:
    """Lines every reader must survive: each is rejected with its own reason."""
    scan = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    missing = v2_report(900_001, scan, {"Avast": "Win32:Malware-gen"})
    del missing["sha256"]
    bad_hash = v2_report(900_002, scan, {"Avast": "Win32:Malware-gen"})
    bad_hash["sha256"] = "not-a-sha256"
    wrong_type = v2_report(900_003, scan, {"Avast": "Win32:Malware-gen"})
    wrong_type["positives"] = "many"
    return [
        b'{"sha256": "' + file_hashes(900_000)[0].encode() + b'", "positives": 3, "scan_da',  # torn line
        json.dumps(missing).encode(),
        json.dumps(bad_hash).encode(),
        json.dumps(wrong_type).encode(),
        b"not json at all",
    ]


def write_vt_feed(
    store: ObjectStore,
    days: tuple[str, ...] = SAMPLE_DAYS,
    packages_per_day: int = 4,
    reports_per_package: int = 40,
    seed: int = 0,
) -> dict[str, int]:
    """Write the sample packages; returns object name -> bytes."""
    rng = random.Random(seed)
    files = max(8, reports_per_package * packages_per_day * len(days) // 3)  # small pool: rescans happen
    written: dict[str, int] = {}
    for day_index, text in enumerate(days):
        day = date.fromisoformat(text)
        minutes = sorted(rng.sample(range(1440), packages_per_day))
        for package_index, minute in enumerate(minutes):
            start = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minute)
            v3 = package_index % 2 == 1
            lines = []
            for _ in range(reports_per_package):
                index = rng.randrange(files)
                scan = start - timedelta(seconds=rng.randrange(6 * 3600))
                positives = 0 if rng.random() < 0.3 else rng.randint(1, 12)
                detected = _detections(rng, positives)
                report = v3_object(index, scan, detected) if v3 else v2_report(index, scan, detected)
                lines.append(json.dumps(report).encode())
            if package_index == 0:
                lines[1:1] = _quirk_lines(day)
                not_found = {"response_code": 0, "resource": file_hashes(900_004)[0], "verbose_msg": "not found"}
                lines.append(json.dumps(not_found).encode())
                lines.append(b"")
            data = v3_package(lines) if v3 else v2_package(lines)
            if day_index == 1 and package_index == packages_per_day - 1:
                data = data[: len(data) // 2]  # the one truncated package
            name = package_name(day, minute)
            store.write_bytes(name, data)
            written[name] = len(data)
    return written
