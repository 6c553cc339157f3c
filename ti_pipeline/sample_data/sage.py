"""Mongodump files shaped like the 2020-11-05 Sage dump, quirks included.

Numbers come as int32, int64 and double; some strings are missing or of another type; some hashes
are not hex; one shard ends in a torn document. The same seed always writes the same bytes.
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
from bson.int64 import Int64

from ti_pipeline import keys
from ti_pipeline.objectstore import ObjectStore

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
FAMILIES = ["Trojan.GenericKD", "Emotet", "Ransom.WannaCry", "Backdoor.Agent", "PUA.Adware", "Trojan.Zbot", "Worm.Mydoom"]
RESPONSES = [
    ("malware.virus.trojan(14.57,14.35);NONE.null", 40),
    ("ransomware.crypto(20.1,19.9);NONE.null", 5),
    ("unwanted.adware(3.2,3.0);NONE.null", 6),
    ("hacktool.generic(5.0,5.0);NONE.null", 3),
    ("suspicious.heuristic(1.2,1.1);NONE.null", 4),
    ("unknown(-1.0,-1.0);NONE.null", 20),
    ("indifferent(-1.0,-1.0);NONE.null", 22),
]
DOMAIN_TYPES = [("malware", 30), ("phishing", 10), ("whitelist", 10), ("unknown", 25), ("indifferent", 25)]
BASELINE = datetime(2020, 11, 5, tzinfo=UTC)


def _number(rng: random.Random, value: int):
    """The same number as int32, int64 or double, as old records mix them."""
    kind = rng.random()
    if kind < 0.5:
        return value
    if kind < 0.8:
        return Int64(value)
    return float(value)


def _hashes(seed: str) -> tuple[str, str, str]:
    raw = seed.encode()
    return hashlib.sha256(raw).hexdigest(), hashlib.sha1(raw).hexdigest(), hashlib.md5(raw).hexdigest()


def _scan_date(rng: random.Random) -> datetime:
    return BASELINE - timedelta(days=rng.randint(0, 900), seconds=rng.randint(0, 86399))


def vt_v2_report(rng: random.Random, seed: str, positives: int, scan_date: datetime, engines: int = 60) -> dict:
    """A VirusTotal v2 'allinfo' file report (the shape of both the dump's ``value`` and the feed)."""
    sha256, sha1, md5 = _hashes(seed)
    names = ENGINES[:engines]
    detecting = set(rng.sample(range(len(names)), min(positives, len(names))))
    family = rng.choice(FAMILIES)
    scans = {}
    for i, engine in enumerate(names):
        entry = {"detected": i in detecting, "version": f"{rng.randint(1, 20)}.{rng.randint(0, 99)}", "update": "20201104"}
        entry["result"] = f"{family}.{rng.randint(1, 999)}" if i in detecting else None
        scans[engine] = entry
    return {
        "response_code": 1,
        "sha256": sha256,
        "sha1": sha1,
        "md5": md5,
        "scan_date": scan_date.strftime("%Y-%m-%d %H:%M:%S"),
        "positives": positives,
        "total": len(names),
        "scans": scans,
        "type": rng.choice(["Win32 EXE", "Win32 DLL", "PDF", "ZIP", "Android"]),
        "size": rng.randint(1_000, 9_000_000),
        "first_seen": (scan_date - timedelta(days=rng.randint(0, 300))).strftime("%Y-%m-%d %H:%M:%S"),
    }


def file_rep_docs(shard: str, count: int, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(f"file_rep/{shard}/{seed}")
    responses, weights = zip(*RESPONSES, strict=True)
    for i in range(count):
        # A tenth of the hashes are shared with the next shard, rescanned at another date.
        key = f"file/{i}" if i % 10 == 0 else f"file/{shard}/{i}"
        scan = _scan_date(rng)
        positives = rng.randint(0, 40)
        report = vt_v2_report(rng, key, positives, scan)
        report["positives"] = _number(rng, positives)
        report["total"] = _number(rng, report["total"])
        doc = {
            "_id": report["sha1"] if i % 3 else report["md5"],
            "response": rng.choices(responses, weights)[0],
            "firstSeen": _number(rng, int((scan - timedelta(days=30)).timestamp() * 1000)),
            "lastUpdate": Int64(int(scan.timestamp() * 1000)),
            "value": report,
        }
        if rng.random() < 0.3:
            doc["vtClassifierV2Classification"] = {"classification": rng.choice(["malware", "clean", "pua"])}
        quirk = i % 97
        if quirk == 13:
            report["response_code"] = 0  # VT had no report
            for field in ("sha256", "scans", "positives", "total"):
                report.pop(field, None)
        elif quirk == 29:
            report.pop("sha256")  # old record without the key field
        elif quirk == 41:
            report["sha256"] = "zz" + report["sha256"][2:]  # not hex
        elif quirk == 53:
            report["positives"] = str(positives)  # wrongly typed number: kept, count nulled
            report["response_code"] = "1"  # wrongly typed code: rejected
        elif quirk == 67:
            doc["response"] = 42  # wrongly typed string
        elif quirk == 71:
            report["sha256"] = report["sha256"].upper()  # upper-case hex is normalised
        yield doc


def domain_docs(shard: str, count: int, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(f"domains/{shard}/{seed}")
    kinds, weights = zip(*DOMAIN_TYPES, strict=True)
    tlds = ["com", "net", "org", "ru", "cn", "info", "xyz", "top"]
    for i in range(count):
        name = f"d{i}-{shard}-{rng.randint(0, 99999)}.{rng.choice(tlds)}" if i % 10 else f"shared{i}.example.com"
        kind = rng.choices(kinds, weights)[0]
        urls = []
        for _ in range(rng.randint(0, 4)):
            urls.append(
                {
                    "url": f"http://{name}/{rng.randint(0, 999)}.php",
                    "positives": _number(rng, rng.randint(0, 12) if kind != "indifferent" else rng.choice([0, 0, 0, 3])),
                    "total": _number(rng, 70),
                    "scanDate": _scan_date(rng).strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
        doc = {
            "_id": name,
            "response": f"maliciousClassification={kind}",
            "firstSeen": Int64(int(_scan_date(rng).timestamp() * 1000)),
            "lastUpdate": Int64(int(_scan_date(rng).timestamp() * 1000)),
            "value": {
                "detectedUrls": urls,
                "resolutions": [{"ip_address": f"203.0.113.{rng.randint(1, 254)}", "last_resolved": "2020-10-01 00:00:00"}],
                "categories": [rng.choice(["malicious", "phishing", "business"])],
                "whois": "Registrar: Example Registrar",
            },
        }
        quirk = i % 89
        if quirk == 7:
            doc["_id"] = "not a domain!"
        elif quirk == 19:
            doc["response"] = None
        elif quirk == 31:
            doc["_id"] = f"Bücher-{i}.Example"  # IDN, upper case: normalised
        yield doc


def token_docs(count: int = 120, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(f"tokens/{seed}")
    for i in range(count):
        kind = ["DOMAIN", "SHA1", "MD5", "IPv4"][i % 4]
        if kind == "DOMAIN":
            token = f"shared{(i // 4) * 10}.example.com" if i % 8 == 0 else f"token{i}.bad.example"
        elif kind == "SHA1":
            token = _hashes(f"token/{i}")[1]
        elif kind == "MD5":
            token = _hashes(f"token/{i}")[2]
        else:
            token = f"198.51.100.{i % 250 + 1}"
        doc = {
            "_id": token,
            "response": rng.choice(["malware", "ransomware", "whitelist"]),
            "value": {
                "maliciousType": rng.choice(["c2", "phishing", "dropper", "miner"]),
                "source": rng.choice(["rule-team", "ir-case", "partner-feed"]),
                "link": f"https://tickets.example/IR-{1000 + i}",
                "type": kind,
            },
        }
        if i % 37 == 5:
            doc["value"]["type"] = "URL"  # a type the tables do not take
        elif i % 37 == 11:
            doc["_id"] = "999.1.1.1" if kind == "IPv4" else "nothex"
        yield doc


def extension_docs(count: int = 40, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(f"extensions/{seed}")
    base = ["exe", "dll", "scr", "pif", "com", "bat", "cmd", "js", "vbs", "ps1", "doc", "docx", "xls", "pdf",
            "jpg", "png", "txt", "zip", "rar", "7z", "iso", "lnk", "hta", "jar", "msi", "apk", "html", "svg"]
    for i in range(count):
        ext = base[i] if i < len(base) else f"x{i}"
        doc = {
            "_id": {"extension": ext if i % 5 else f".{ext.upper()}"},
            "value": {
                "type": rng.choice(["executable", "document", "image", "archive", "script"]),
                "description": f"{ext} files",
                "sources": [rng.choice(["filext", "iana", "internal"])],
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


def dump_name(shard: str, collection: str, gz: bool = False) -> str:
    return keys.object_name(keys.shard(shard), "cybereason", keys.collection(collection) + (".bson.gz" if gz else ".bson"))


def write_sage_dump(store: ObjectStore, docs_per_shard: int = 2000, seed: int = 0) -> dict[str, int]:
    """The whole sample dump: every shard's big collections, TOKENS in r01, extensions in r04."""
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
