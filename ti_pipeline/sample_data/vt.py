"""VT feed packages shaped like ``gs://vt-file-feeder-by-date``, quirks included.

What the real bucket holds, in small: a few packages per day at scattered minutes (most minutes are
missing, as the pipeline must tolerate), each a bzip2 tar with one member of v2 allinfo reports, one
JSON object per line, and one v3 package per day (bzip2 NDJSON of bare file objects). The real mix:
about half the reports have ``positives`` 0, a few are VT's "not found" answer (``response_code`` 0),
detecting engines sometimes give no result name (``detected: true, result: null``), v3 engines also
answer ``type-unsupported`` or ``timeout``, numbers arrive as strings or doubles in old records, and
the same files are rescanned within a day and across days with different scan dates.

The bad records every reader must survive, each one rejected line with its own reason: a torn line,
text that is not JSON, a report without or with an invalid sha256, positives that is a word or past
int32, a scan date past year 9999 (v3 epoch seconds) or far in the future; one package whose first
line is a JSON array, one truncated package (day 2), and objects that only look like packages
(``.partial``, ``.tmp``, ``~``: uploads in progress, never read). The same seed writes the same bytes.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import random
import tarfile
from datetime import UTC, date, datetime, timedelta

from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.sample_data.sage import ENGINES, FAMILIES

SAMPLE_DAYS = ("2020-11-01", "2020-11-02", "2020-11-03")
# Categories of v3 engines without a verdict, by engine position: they do not count in ``total``.
NO_VERDICT = {13: "type-unsupported", 29: "timeout", 41: "failure", 53: "confirmed-timeout"}
SHARE_POSITIVES_ZERO = 0.45
SHARE_NOT_FOUND = 0.03
SHARE_RESULT_NULL = 0.08  # of detecting engines: detected, but no result name
# Object names beside a day's packages that only look like packages (never read).
NOT_PACKAGES = (".partial", ".tmp", "~")


def file_hashes(index: int) -> tuple[str, str, str]:
    """(sha256, sha1, md5) of a sample file, stable for an index."""
    seed = f"ti-pipeline sample file {index}".encode()
    return hashlib.sha256(seed).hexdigest(), hashlib.sha1(seed).hexdigest(), hashlib.md5(seed).hexdigest()


def v2_report(
    index: int,
    scan_date: datetime,
    detected: dict[str, str | None],
    *,
    engines: list[str] = ENGINES,
    extra: dict | None = None,
) -> dict:
    """A v2 allinfo report: every engine in ``scans``, the ``detected`` ones with their result (None: null)."""
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


def v3_object(index: int, scan_date: datetime, detected: dict[str, str | None], *, engines: list[str] = ENGINES) -> dict:
    """A v3 file object (``last_analysis_*``) for the same file and scan; engines at the positions of
    ``NO_VERDICT`` answer without a verdict unless they detected it."""
    sha256, sha1, md5 = file_hashes(index)
    categories = {
        engine: "malicious" if engine in detected else NO_VERDICT.get(i, "undetected") for i, engine in enumerate(engines)
    }
    results = {
        engine: {
            "category": categories[engine],
            "engine_name": engine,
            "engine_version": f"{1 + i % 9}.{i % 7}.{i}",
            "result": detected.get(engine),
            "method": "blacklist",
            "engine_update": scan_date.strftime("%Y%m%d"),
        }
        for i, engine in enumerate(engines)
    }
    stats = {name: 0 for name in ("malicious", "suspicious", "undetected", "harmless", "timeout", "confirmed-timeout", "failure", "type-unsupported")}
    for category in categories.values():
        stats[category] += 1
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
            "last_analysis_stats": stats,
            "last_analysis_results": results,
        },
    }


def v2_package(lines: list[bytes], member: str = "file-feed.json", level: int = 9) -> bytes:
    """A bzip2 tar with one NDJSON member (fixed header fields, so the bytes are reproducible).

    ``level`` is bzip2's block size in 100 kB: a real package of several MB spans several blocks;
    level 1 gives a small sample package several too."""
    body = b"".join(line + b"\n" for line in lines)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = len(body), 1604188800, 0o644
        tar.addfile(info, io.BytesIO(body))
    return bz2.compress(buffer.getvalue(), level)


def v3_package(lines: list[bytes], level: int = 9) -> bytes:
    return bz2.compress(b"".join(line + b"\n" for line in lines), level)


def package_name(day: date, minute: int) -> str:
    folder = day.strftime("%Y%m%d")
    return f"{folder}/{folder}T{minute // 60:02d}{minute % 60:02d}"


def _detections(rng: random.Random, positives: int) -> dict[str, str | None]:
    engines = rng.sample(ENGINES, positives)
    family = rng.choice(FAMILIES)
    return {engine: None if rng.random() < SHARE_RESULT_NULL else f"{family}.{rng.randint(1, 999)}" for engine in engines}


def _report_line(rng: random.Random, index: int, scan: datetime, v3: bool) -> bytes:
    if not v3 and rng.random() < SHARE_NOT_FOUND:
        sha256 = file_hashes(index)[0]
        return json.dumps({"response_code": 0, "resource": sha256, "verbose_msg": "The requested resource is not among the finished, queued or pending scans"}).encode()
    positives = 0 if rng.random() < SHARE_POSITIVES_ZERO else rng.randint(1, 40)
    detected = _detections(rng, positives)
    if v3:
        return json.dumps(v3_object(index, scan, detected)).encode()
    report = v2_report(index, scan, detected)
    if positives and rng.random() < 0.05:  # old records: numbers as strings or doubles, read the same
        report["positives"], report["total"] = rng.choice([(str(positives), str(report["total"])), (float(positives), float(report["total"]))])
    return json.dumps(report).encode()


def _quirk_lines(day: date, v3: bool) -> list[bytes]:
    """Lines every reader must survive: each is rejected with its own reason."""
    scan = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    if v3:
        far = v3_object(900_005, scan, {"Avast": "Win32:Malware-gen"})
        far["attributes"]["last_analysis_date"] = 10**15  # past year 9999: out_of_range:scan_date
        return [json.dumps(far).encode()]
    missing = v2_report(900_001, scan, {"Avast": "Win32:Malware-gen"})
    del missing["sha256"]
    bad_hash = v2_report(900_002, scan, {"Avast": "Win32:Malware-gen"})
    bad_hash["sha256"] = "not-a-sha256"
    wrong_type = v2_report(900_003, scan, {"Avast": "Win32:Malware-gen"})
    wrong_type["positives"] = "many"
    huge = v2_report(900_006, scan, {"Avast": "Win32:Malware-gen"})
    huge["positives"] = 2**31
    future = v2_report(900_007, scan, {"Avast": "Win32:Malware-gen"})
    future["scan_date"] = "2099-01-01 00:00:00"  # would win "newest scan" forever: in_future:scan_date
    return [
        b'{"sha256": "' + file_hashes(900_000)[0].encode() + b'", "positives": 3, "scan_da',  # torn line
        json.dumps(missing).encode(),
        json.dumps(bad_hash).encode(),
        json.dumps(wrong_type).encode(),
        json.dumps(huge).encode(),
        json.dumps(future).encode(),
        b"not json at all",
    ]


def _additional_info(rng: random.Random) -> dict:
    """A slice of the allinfo extras (``additional_info``, tags, first_seen) so a report is feed-sized (~8.5 KB)."""
    return {
        "additional_info": {
            "exiftool": {f"Field{i}": f"{rng.getrandbits(48):x} value {i}" for i in range(25)},
            "imports": {f"lib{i}.dll": [f"Func{rng.randrange(999)}" for _ in range(6)] for i in range(8)},
            "pe-resource-langs": {"NEUTRAL": rng.randrange(9), "ENGLISH US": rng.randrange(9)},
            "trid": [{"file_type": "Win32 Executable (generic)", "probability": rng.random() * 100}],
        },
        "tags": ["peexe", "overlay", "signed"][: rng.randrange(4)],
        "first_seen": (datetime(2020, 10, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**7))).strftime(
            "%Y-%m-%d %H:%M:%S"
        ),
    }


def write_feed_day(store: ObjectStore, day: date, packages: int, reports: int, seed: int = 0) -> list[str]:
    """A day of feed-sized v2 packages at minutes 0, 1, 2, ... (the shape of the real feed, for benchmarks):
    every one of the 63 engines in ``scans``, ``additional_info`` (~8.5 KB a report), 40% of reports with
    positives 0, files drawn from a pool of ``reports x packages`` so some are rescanned within the day.
    Returns the object names."""
    if not 0 < packages <= 1440:
        raise ValueError(f"a day holds 1 to 1440 packages, not {packages}")
    rng = random.Random(seed)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    names = []
    for minute in range(packages):
        lines = []
        for _ in range(reports):
            positives = 0 if rng.random() < 0.4 else rng.randint(1, 40)
            family = rng.choice(FAMILIES)
            detected = {e: f"{family}.{rng.randrange(999)}" for e in rng.sample(ENGINES, positives)}
            scan = start + timedelta(seconds=rng.randrange(86400))
            report = v2_report(rng.randrange(reports * packages), scan, detected, extra=_additional_info(rng))
            lines.append(json.dumps(report).encode())
        name = package_name(day, minute)
        store.write_bytes(name, v2_package(lines))
        names.append(name)
    return names


def write_vt_feed(
    store: ObjectStore,
    days: tuple[str, ...] = SAMPLE_DAYS,
    packages_per_day: int = 4,
    reports_per_package: int = 40,
    seed: int = 0,
) -> dict[str, int]:
    """Write the sample packages and the objects beside them; returns object name -> bytes.

    Per day: the last package is v3, the others v2; the first and the v3 package carry the quirk
    lines; on the second day the second package is cut at two thirds (compressed in 100 kB blocks,
    so the blocks before the cut still decompress); on the third the second package's first line is
    a JSON array. The first day's folder also holds ``.partial``, ``.tmp`` and ``~`` objects.
    """
    rng = random.Random(seed)
    files = max(8, reports_per_package * packages_per_day * len(days) // 3)  # small pool: rescans happen
    written: dict[str, int] = {}
    for day_index, text in enumerate(days):
        day = date.fromisoformat(text)
        minutes = sorted(rng.sample(range(1440), packages_per_day))
        for package_index, minute in enumerate(minutes):
            start = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minute)
            v3 = package_index == packages_per_day - 1 and packages_per_day > 1
            lines = [
                _report_line(rng, rng.randrange(files), start - timedelta(seconds=rng.randrange(6 * 3600)), v3)
                for _ in range(reports_per_package)
            ]
            if package_index == 0 or v3:
                lines[1:1] = _quirk_lines(day, v3)
                lines.append(b"")
            if day_index == 2 and package_index == 1:
                lines.insert(0, b"[" + lines[0] + b"]")  # a JSON array as the first line
            truncated = day_index == 1 and package_index == 1
            level = 1 if truncated else 9
            data = v3_package(lines, level) if v3 else v2_package(lines, level=level)
            if truncated:
                data = data[: len(data) * 2 // 3]  # the one truncated package
            name = package_name(day, minute)
            store.write_bytes(name, data)
            written[name] = len(data)
            if day_index == 0 and package_index == 0:
                for suffix in NOT_PACKAGES:  # an upload in progress, a temporary copy, an editor's backup
                    store.write_bytes(name + suffix, data[: len(data) // 3])
                    written[name + suffix] = len(data) // 3
    return written
