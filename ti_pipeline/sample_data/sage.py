"""Mongodump files shaped like the 2020-11-05 Sage dump, in its production layout, quirks included.

The shapes follow the real collections (SPEC §2 and the upstream's samples): file_rep is mostly
small "not found" documents (``unknown(-1.0,-1.0);NONE.null``, ``response_code`` 0, no scans) with
about one in seven a full VirusTotal report of 60-70 engines, part of them with an ML verdict;
TOKENS responses carry ``;SUBTYPE`` suffixes and DOMAIN tokens a leading ``.`` or ``//`` or blanks;
TOKENS and FILE_EXTENSION_CLASSIFICATION start with their dataset header document. Numbers come
as int32, int64, double or string; some strings are missing or of another type; some hashes are
upper-case or not hex; one shard ends in a torn document and one is gzipped. The same seed always
writes the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bson
from bson.binary import Binary
from bson.int64 import Int64

from ti_pipeline.core import keys
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.sage_dump import layout

ENGINES = [
    "Bkav", "MicroWorld-eScan", "FireEye", "CAT-QuickHeal", "McAfee", "Cylance", "Zillya", "Sangfor",
    "K7AntiVirus", "Alibaba", "K7GW", "Cybereason", "Arcabit", "Baidu", "Cyren", "Symantec", "ESET-NOD32",
    "TrendMicro-HouseCall", "Avast", "ClamAV", "Kaspersky", "BitDefender", "NANO-Antivirus", "ViRobot",
    "Rising", "Ad-Aware", "Emsisoft", "Comodo", "F-Secure", "DrWeb", "VIPRE", "TrendMicro", "McAfee-GW-Edition",
    "Sophos", "Ikarus", "Jiangmin", "Avira", "MAX", "Antiy-AVL", "Kingsoft", "Microsoft", "SUPERAntiSpyware",
    "ZoneAlarm", "GData", "Cynet", "AhnLab-V3", "Acronis", "VBA32", "ALYac", "TACHYON", "Malwarebytes",
    "Panda", "Zoner", "Tencent", "Yandex", "SentinelOne", "MaxSecure", "Fortinet", "Webroot", "AVG", "Paloalto",
    "CrowdStrike", "Qihoo-360",
]
# Engines some dump reports carry beyond ENGINES (the VT sample keeps to ENGINES): 60-70 in all.
MORE_ENGINES = ["nProtect", "CMC", "TheHacker", "Babable", "F-Prot", "TotalDefense", "Invincea"]
FAMILIES = ["Trojan.GenericKD", "Emotet", "Ransom.WannaCry", "Backdoor.Agent", "PUA.Adware", "Trojan.Zbot", "Worm.Mydoom"]

FILE_CLASS = "com.cybereason.sage.services.external.virustotal.VirusTotalFileClassification"
FILE_REPORT_CLASS = "com.cybereason.sage.integration.virustotal.VirusTotalFileReport"
NOT_FOUND = "unknown(-1.0,-1.0);NONE.null"
NOT_FOUND_MSG = "The requested resource is not among the finished, queued or pending scans"
# Share of file_rep documents that carry a full report (the rest: VT had none).
FULL_REPORT_SHARE = 0.14
# (response of a full report, weight, positives range, the ML verdict it usually comes with)
VERDICTS = [
    ("malware.virus.trojan(14.57,14.35);NONE.null", 30, (8, 60), "malware"),
    ("ransomware.crypto(20.1,19.9);NONE.null", 5, (20, 60), "ransomware"),
    ("hacktool.generic(5.0,5.0);NONE.null", 4, (3, 20), "hacktool"),
    ("unwanted.adware(3.2,3.0);NONE.null", 6, (2, 15), "unwanted"),
    ("indifferent(-1.0,-1.0);NONE.null", 35, (0, 2), "indifferent"),
    ("whitelist(-1.0,-1.0);NONE.null", 12, (0, 0), "whitelist"),
    ("unknown(-1.0,-1.0);NONE.null", 8, (0, 1), "indifferent"),
]
ML_VERDICTS = ["indifferent", "malware", "whitelist", "ransomware", "unwanted", "hacktool"]
ML_SHARE = 0.5  # of the full reports
DOMAIN_TYPES = [("malware", 30), ("whitelist", 12), ("unknown", 30), ("indifferent", 28)]
TOKEN_RESPONSES = [
    ("malware", 30), ("malware;MS_OFFICE", 6), ("ransomware", 8), ("hacktool", 4), ("unwanted", 3),
    ("whitelist;ANTI_VIRUS", 8), ("whitelist;BROWSER", 3), ("whitelist", 4), ("indifferent;SHELL", 5),
    ("indifferent;SVCHOST", 3), ("malware;RUNDLL", 2),
]
TOKEN_TYPES = ["DOMAIN", "SHA1", "MD5", "SHA256", "IPv4"]
# Token values that are simply invalid, as curated (at positions of their type: i % 5 picks the type).
INVALID_TOKENS = {12: "0123456789abcdef", 45: "intranet-c2", 74: "999.1.1.1", 101: "nothex"}
TOKEN_SOURCES = ["Asian APT", "Locky", "Operation Dust Storm", "Japan SOC - Apple ID phishing domains", "rule-team"]
EXTENSION_TYPES = ["EXECUTABLE", "SYSTEM_WINDOWS", "DOCUMENT_AUDIO", "DOCUMENT_VIDEO", "ARCHIVE_COMPRESSED", "SCRIPT"]
BASELINE = datetime(2020, 11, 5, tzinfo=UTC)


def _number(rng: random.Random, value: int):
    """The same number as int32, int64, double or (rarely) a string, as old records mix them."""
    kind = rng.random()
    if kind < 0.45:
        return value
    if kind < 0.75:
        return Int64(value)
    if kind < 0.95:
        return float(value)
    return str(value)


def _epoch_ms(moment: datetime) -> Int64:
    return Int64(int(moment.timestamp() * 1000))


def _hashes(seed: str) -> tuple[str, str, str]:
    raw = seed.encode()
    return hashlib.sha256(raw).hexdigest(), hashlib.sha1(raw).hexdigest(), hashlib.md5(raw).hexdigest()


def _scan_date(rng: random.Random) -> datetime:
    return BASELINE - timedelta(days=rng.randint(0, 900), seconds=rng.randint(0, 86399))


def _text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def vt_v2_report(rng: random.Random, seed: str, positives: int, scan_date: datetime) -> dict:
    """A VirusTotal v2 'allinfo' file report with 60-70 engines (the dump's ``value`` when VT had one)."""
    sha256, sha1, md5 = _hashes(seed)
    names = ENGINES + MORE_ENGINES[: rng.randint(0, len(MORE_ENGINES))]
    detecting = set(rng.sample(range(len(names)), min(positives, len(names))))
    family = rng.choice(FAMILIES)
    scans = {}
    for i, engine in enumerate(names):
        entry = {"detected": i in detecting, "version": f"{rng.randint(1, 20)}.{rng.randint(0, 99)}",
                 "update": (scan_date - timedelta(days=rng.randint(0, 3))).strftime("%Y%m%d")}
        if i in detecting:
            entry["result"] = f"{family}.{rng.randint(1, 999)}"
        scans[engine] = entry
    stamp = int(scan_date.timestamp())
    first = scan_date - timedelta(days=rng.randint(0, 1500))
    return {
        "_class": FILE_REPORT_CLASS,
        "scans": scans,
        "scan_id": f"{sha256}-{stamp}",
        "sha1": sha1,
        "resource": sha1,
        "response_code": 1,
        "scan_date": _text(scan_date),
        "permalink": f"https://www.virustotal.com/gui/file/{sha256}/detection/f-{sha256}-{stamp}",
        "verbose_msg": "Scan finished, information embedded",
        "total": len(names),
        "positives": positives,
        "sha256": sha256,
        "md5": md5,
        "type": rng.choice(["Win32 EXE", "Win32 DLL", "PDF", "ZIP", "Android"]),
        "times_submitted": rng.randint(1, 200),
        "size": Int64(rng.randint(1_000, 9_000_000)),
        "submission_names": [f"{rng.choice(['setup', 'invoice', 'update', 'bit'])}{rng.randint(0, 99999):05x}.tmp"
                             for _ in range(rng.randint(1, 6))],
        "first_seen": _text(first),
        "last_seen": _text(scan_date),
        "ITW_urls": [],
        "additional_info": {"magic": "PE32 executable for MS Windows (GUI) Intel 80386", "first_seen_itw": _text(first),
                            "trid": "Win32 Executable (generic) (52.6%)\nGeneric Win/DOS Executable (23.3%)",
                            "pe-machine-type": "332"},
        "tags": ["peexe"],
        "unique_sources": rng.randint(1, 30),
        "harmless_votes": 0,
        "malicious_votes": 0,
        "community_reputation": 0,
    }


def _not_found(rng: random.Random, shard: str, i: int) -> dict:
    """A document VT had no report for: most of file_rep."""
    _, sha1, md5 = _hashes(f"missing/{shard}/{i}")
    key = md5 if i % 4 == 0 else sha1
    seen = _scan_date(rng)
    doc = {"_id": key, "_class": FILE_CLASS}
    if i % 4:  # old records (MD5 keys) carry no formatVersion
        doc["formatVersion"] = 1
    doc.update({
        "expiration": _epoch_ms(seen + timedelta(days=180)),
        "response": NOT_FOUND,
        "firstSeen": _epoch_ms(seen - timedelta(days=rng.randint(0, 700))),
        "lastUpdate": _epoch_ms(seen),
        "value": {"_class": FILE_REPORT_CLASS, "resource": key, "response_code": _number(rng, 0), "verbose_msg": NOT_FOUND_MSG},
    })
    return doc


def _full_report(rng: random.Random, shard: str, k: int) -> dict:
    """The k-th document of the shard with a full report; quirks at fixed positions (see below)."""
    # A tenth of the reports are of files shared by every shard, rescanned at other dates.
    seed = f"file/{k}" if k % 10 == 0 else f"file/{shard}/{k}"
    response, _, (low, high), usual = rng.choices(VERDICTS, [v[1] for v in VERDICTS])[0]
    scan = _scan_date(rng)
    report = vt_v2_report(rng, seed, rng.randint(low, high), scan)
    report["positives"] = _number(rng, report["positives"])
    report["total"] = _number(rng, report["total"])
    doc = {"_id": report["sha1"], "_class": FILE_CLASS, "formatVersion": 1}
    if rng.random() < ML_SHARE:
        verdict = usual if rng.random() < 0.7 else rng.choice(ML_VERDICTS)
        doc["vtClassifierV2Classification"] = {
            "taskUUID": Binary(rng.randbytes(16), 3),
            "buildVersion": "prod-master-72:vtc-1.1.40:plume-1.0.1",
            "algoVersion": "2.0",
            "classification": verdict,
        }
    doc.update({
        "expiration": _epoch_ms(scan + timedelta(days=180)),
        "response": response,
        "firstSeen": _number(rng, int((scan - timedelta(days=30)).timestamp() * 1000)),
        "lastUpdate": _epoch_ms(scan),
        "value": report,
    })
    quirk = k % 53
    if quirk in (3, 7, 17):  # the quirks below must reach their rule: a malware verdict the policy admits
        doc["response"] = VERDICTS[0][0]
        doc.pop("vtClassifierV2Classification", None)
    if quirk == 3:
        report.pop("sha256")  # old record without the key field: rejected
    elif quirk == 7:
        report["sha256"] = "zz" + report["sha256"][2:]  # not hex: rejected
    elif quirk == 11:
        report["response_code"] = "1"  # number as a string: read as 1
    elif quirk == 17:
        doc["response"] = 42  # wrongly typed response and no ML verdict: no classification, filtered
    elif quirk == 19:
        report["sha256"] = report["sha256"].upper()  # upper-case hex is normalised
    elif quirk == 23:
        report.pop("sha1")  # optional hash missing: stored as NULL
    return doc


def file_rep_docs(shard: str, count: int, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(f"file_rep/{shard}/{seed}")
    full = 0
    for i in range(count):
        if rng.random() < FULL_REPORT_SHARE:
            yield _full_report(rng, shard, full)
            full += 1
        else:
            yield _not_found(rng, shard, i)


def domain_docs(shard: str, count: int, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(f"domains/{shard}/{seed}")
    kinds, weights = zip(*DOMAIN_TYPES, strict=True)
    tlds = ["com", "net", "org", "ru", "cn", "info", "xyz", "top"]
    for i in range(count):
        name = f"d{i}-{shard}-{rng.randint(0, 99999)}.{rng.choice(tlds)}" if i % 10 else f"shared{i}.example.com"
        kind = rng.choices(kinds, weights)[0]
        urls = []
        if kind != "unknown":
            for _ in range(rng.randint(0, 4)):
                urls.append({
                    "url": f"http://{name}/{rng.randint(0, 999)}.php",
                    "positives": _number(rng, rng.randint(0, 12) if kind != "indifferent" else rng.choice([0, 0, 0, 3])),
                    "total": _number(rng, 70),
                    "scanDate": _text(_scan_date(rng)),
                })
        found = kind != "unknown"
        value = {
            "_class": "com.cybereason.sage.integration.virustotal.VirusTotalDomainReport",
            "responseCode": 1 if found else 0,
            "verboseMessage": "Domain found in dataset" if found else "Domain not found",
            "uniqueIdentifier": name,
        }
        if found:
            value.update({
                "resolutions": [{"lastResolved": _text(_scan_date(rng)), "ipAddress": f"203.0.113.{rng.randint(1, 254)}"}],
                "detectedUrls": urls,
                "whois": "Domain Name: EXAMPLE\nRegistrar: Example Registrar, Inc.\nName Server: NS1.EXAMPLE.NET",
                "whoisTimestamp": float(int(_scan_date(rng).timestamp())),
                "categories": [rng.choice(["malicious", "phishing", "business", "uncategorized"])],
                "subdomains": [f"www.{name}"],
                "siblings": [],
            })
        doc = {
            "_id": name,
            "_class": "com.cybereason.sage.services.external.virustotal.VirusTotalDomainClassification",
            "expiration": _epoch_ms(BASELINE + timedelta(days=30)),
            "response": f"maliciousClassification={kind}",
            "firstSeen": _epoch_ms(_scan_date(rng)),
            "lastUpdate": _epoch_ms(_scan_date(rng)),
            "value": value,
        }
        quirk = i % 89
        if quirk == 7:
            doc["_id"] = "not a domain!"
        elif quirk == 19:
            doc["response"] = None
        elif quirk == 31:
            doc["_id"] = f"Bücher-{i}.Example"  # IDN, upper case: normalised
        yield doc


def _token_value(i: int, kind: str) -> str:
    """The i-th token of ``kind``, as curators typed it (DOMAIN: leading ``.`` or ``//``, blanks)."""
    if kind == "DOMAIN":
        name = f"shared{(i // 5) * 10}.example.com" if i % 10 == 0 else f"token{i}.bad.example"
        return [name, f".{name}", f"//{name}", f"  {name} "][(i // 5) % 4]
    if kind == "IPv4":
        return f"198.51.100.{i % 250 + 1}"
    sha256, sha1, md5 = _hashes(f"token/{i}")
    return {"SHA1": sha1, "MD5": md5.upper() if i % 3 == 0 else md5, "SHA256": sha256}[kind]


def token_docs(count: int = 120, seed: int = 0) -> Iterator[dict]:
    """The dataset header, then ``count`` tokens of all five types."""
    rng = random.Random(f"tokens/{seed}")
    responses, weights = zip(*TOKEN_RESPONSES, strict=True)
    yield {"_id": "TOKENS", "_class": "com.cybereason.sage.model.dataset.DatasetInfo", "version": "41.0",
           "lastUpdateTimestamp": _epoch_ms(BASELINE - timedelta(days=3))}
    for i in range(count):
        kind = TOKEN_TYPES[i % len(TOKEN_TYPES)]
        doc = {
            "_id": _token_value(i, kind),
            "_class": "com.cybereason.sage.model.dataset.tokens.TokenRecord",
            "expiration": Int64(9999999999999),
            "response": rng.choices(responses, weights)[0],
            "firstSeen": _epoch_ms(BASELINE - timedelta(days=rng.randint(100, 900))),
            "value": {
                "_class": "com.cybereason.sage.model.dataset.tokens.TokenInfo",
                "maliciousType": rng.choice(["malware", "ransomware", "phishing", "c2"]),
                "source": rng.choice(TOKEN_SOURCES),
                "link": rng.choice(["", f"https://tickets.example/IR-{1000 + i}"]),
                "expiration": Int64(9999999999999),
                "type": kind.capitalize() if kind == "DOMAIN" and i % 20 == 0 else kind,  # 'Domain' as well as 'DOMAIN'
            },
        }
        if i % 37 == 5:
            doc["value"]["type"] = "URL"  # a type the tables do not take
        elif i in INVALID_TOKENS:
            doc["_id"] = INVALID_TOKENS[i]
        yield doc


def extension_docs(count: int = 40, seed: int = 0) -> Iterator[dict]:
    """The dataset header, then ``count`` extensions (the last one broken)."""
    rng = random.Random(f"extensions/{seed}")
    base = ["exe", "dll", "scr", "pif", "com", "bat", "cmd", "js", "vbs", "ps1", "doc", "docx", "xls", "pdf",
            "jpg", "png", "txt", "zip", "rar", "7z", "iso", "lnk", "hta", "jar", "msi", "apk", "html", "svg"]
    yield {"_id": "FILE_EXTENSION_CLASSIFICATION", "_class": "com.cybereason.sage.model.dataset.DatasetInfo",
           "version": "10.0", "lastUpdateTimestamp": Int64(1598964282276)}
    for i in range(count):
        ext = base[i] if i < len(base) else f"x{i}"
        doc = {
            "_id": {"extension": ext if i % 5 else f".{ext.upper()}"},
            "_class": "com.cybereason.sage.model.dataset.extension.FileExtensionClassificationRecord",
            "value": {
                "_class": "com.cybereason.sage.model.dataset.extension.FileExtensionInfo",
                "sources": rng.sample(["dotwhat.net", "wikipedia.org", "filext.com"], rng.randint(1, 2)),
                "description": f"{ext} files",
                "type": rng.choice(EXTENSION_TYPES),
            },
        }
        if i == count - 1:
            doc["value"] = "broken"
        yield doc


def write_dump_file(store: ObjectStore, name: str, docs: Iterator[dict], *, torn: bool = False, gz: bool = False) -> int:
    """Write documents as a mongodump file; ``torn`` cuts the last document in half. Returns bytes."""
    with tempfile.NamedTemporaryFile(delete=False) as tmp:
        path = Path(tmp.name)
        out = gzip.GzipFile(fileobj=tmp, mode="wb", mtime=0) if gz else tmp
        last = b""
        for doc in docs:
            if last:
                out.write(last)
            last = bson.encode(doc)
        out.write(last[: len(last) // 2] if torn else last)
        if gz:
            out.close()
    try:
        store.write_file(name, path)
        return path.stat().st_size
    finally:
        path.unlink(missing_ok=True)


def dump_name(shard: str, collection: str, gz: bool = False, shard_dir: str = layout.PRODUCTION_SHARD_DIR) -> str:
    """A collection file's object name; the production layout unless ``shard_dir`` says otherwise."""
    return layout.object_name(shard, collection, ".bson.gz" if gz else ".bson", shard_dir)


def write_sage_dump(store: ObjectStore, docs_per_shard: int = 2000, seed: int = 0) -> dict[str, int]:
    """The whole sample dump in the production layout: every shard's big collections, TOKENS in
    r01, extensions in r04."""
    written = {}
    for shard in keys.SHARDS:
        gz = shard == "r05"  # one shard compressed, as some dumps are
        name = dump_name(shard, "file_rep", gz)
        written[name] = write_dump_file(store, name, file_rep_docs(shard, docs_per_shard, seed), torn=shard == "r03", gz=gz)
        name = dump_name(shard, "domain_classification")
        written[name] = write_dump_file(store, name, domain_docs(shard, docs_per_shard // 2, seed))
    written[dump_name("r01", "TOKENS")] = write_dump_file(store, dump_name("r01", "TOKENS"), token_docs(seed=seed))
    name = dump_name("r04", "FILE_EXTENSION_CLASSIFICATION")
    written[name] = write_dump_file(store, name, extension_docs(seed=seed))
    return written
