"""A sample submissions lake: a key pair and one submission per case the archive must handle.

Every parser (CSV, STIX 2.1, MISP), a later CSV that changes an earlier action (latest wins), an
unknown typetag (NOT_SUPPORTED), a tampered blob, a blob encrypted for another key and a deeply nested
payload (ERROR), and a resubmission of the MISP event in another order (recognised as duplicate).
The same seed and key always write the same bytes.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

from Crypto.PublicKey import RSA

from ti_pipeline.objectstore import ObjectStore
from ti_pipeline.submissions import crypto, lake

SHA256_A = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
SHA256_B = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
MD5_A = "d41d8cd98f00b204e9800998ecf8427e"
SHA1_A = "da39a3ee5e6b4b0d3255bfef95601890afd80709"

ACME_CSV = f"""type,value,action,comment
sha256,{SHA256_A},block,empty-file dropper
md5,{MD5_A},block,
domain,Bücher.example,block,IDN phishing
ip,203.0.113.7,block,C2
ip,8.8.8.8,allow,resolver
domain,intranet.acme.example,allow,"'); DROP TABLE customer_ioc; --"
sha256,not-a-hash,block,typo
ip,198.51.100.0/24,block,whole range
domain,bad.example,quarantine,unknown action
ip,203.0.113.7,block,C2 (listed twice)
"""

ACME_CSV_LATER = """type,value,action,comment
ip,8.8.8.8,block,resolver abused
domain,new-c2.example,block,
"""

GLOBEX_STIX = {
    "type": "bundle",
    "id": "bundle--8f2c2f3e-0c5d-4a43-9b8e-3f0f3c1f2a10",
    "objects": [
        {"type": "identity", "id": "identity--1", "name": "Globex SOC", "identity_class": "organization"},
        {
            "type": "indicator",
            "id": "indicator--1",
            "name": "Loader hashes",
            "pattern_type": "stix",
            "pattern": f"[file:hashes.'SHA-256' = '{SHA256_B}' OR file:hashes.MD5 = '{MD5_A}']",
            "indicator_types": ["malicious-activity"],
        },
        {"type": "indicator", "id": "indicator--2", "name": "Phishing domain",
         "pattern": "[domain-name:value = 'Login-Globex.example']", "pattern_type": "stix"},
        {"type": "indicator", "id": "indicator--3", "name": "C2 v4", "pattern": "[ipv4-addr:value = '192.0.2.44']"},
        {"type": "indicator", "id": "indicator--4", "name": "Partner VPN", "indicator_types": ["benign"],
         "pattern": "[ipv6-addr:value = '2001:DB8:0:0::1']"},
        {"type": "indicator", "id": "indicator--5", "name": "Old", "revoked": True,
         "pattern": "[domain-name:value = 'old.example']"},
        {"type": "indicator", "id": "indicator--6", "name": "Combined",
         "pattern": "[domain-name:value = 'a.example' AND ipv4-addr:value = '192.0.2.1']"},
        {"type": "indicator", "id": "indicator--7", "name": "URL", "pattern": "[url:value = 'http://x.example/a']"},
        {"type": "malware", "id": "malware--1", "name": "GlobexLoader", "is_family": True},
    ],
}

INITECH_MISP = {
    "Event": {
        "info": "Initech incident 42",
        "Tag": [{"name": "tlp:amber"}],
        "Attribute": [
            {"type": "md5", "value": MD5_A.upper(), "comment": "dropper"},
            {"type": "sha1", "value": SHA1_A},
            {"type": "sha256", "value": SHA256_B},
            {"type": "domain", "value": "exfil.initech.example"},
            {"type": "hostname", "value": "mail.initech.example", "Tag": [{"name": "allowlist"}]},
            {"type": "ip-src", "value": "198.51.100.23"},
            {"type": "ip-dst", "value": "999.1.1.1"},
            {"type": "url", "value": "http://exfil.initech.example/upload"},
            {"type": "domain", "value": "gone.example", "deleted": True},
        ],
        "Object": [
            {"name": "file", "Attribute": [{"type": "sha256", "value": "0" * 64, "comment": "zero hash"}]},
        ],
    }
}

OPENIOC_XML = '<?xml version="1.0"?><ioc xmlns="http://openioc.org/schemas/OpenIOC_1.1"><definition/></ioc>'


def _deep_json(levels: int) -> str:
    return '{"Event": ' + '{"a": ' * levels + "1" + "}" * levels + "}"


def _reordered(event: dict) -> dict:
    """The same MISP event with its attributes in reverse order and padded strings (same identity)."""
    inner = dict(event["Event"])
    inner["Attribute"] = list(reversed(inner["Attribute"]))
    inner["info"] = f"  {inner['info']}  "
    return {"Event": inner}


def sample_key(key_file: Path, seed: int) -> RSA.RsaKey:
    """The archive's key: the existing file (mode checked), else a deterministic new pair beside it."""
    if key_file.exists():
        return crypto.load_private_key(key_file)
    private_pem, public_pem = crypto.generate_key_pair(randfunc=random.Random(f"archive-key-{seed}").randbytes)
    crypto.write_private_key(key_file, private_pem)
    crypto.default_public_key_path(key_file).write_bytes(public_pem)
    return RSA.import_key(private_pem)


def write_submissions(store: ObjectStore, key_file: Path, seed: int = 0) -> dict[str, int]:
    """Write the sample lake; returns object name -> bytes (the key files are not listed)."""
    public = sample_key(key_file, seed).publickey()
    other = RSA.import_key(crypto.generate_key_pair(randfunc=random.Random(f"other-key-{seed}").randbytes)[1])
    rng = random.Random(f"submissions-{seed}")
    written: dict[str, int] = {}

    def submit(org: str, typetag: str, payload: str, when: str, key: RSA.RsaKey = public, **kw) -> str:
        meta = lake.write_submission(
            store, org_id=org, typetag=typetag, payload=payload.encode(), public_key=key,
            when=datetime.fromisoformat(when).replace(tzinfo=UTC), randfunc=rng.randbytes, **kw,
        )
        for name in (lake.blob_name(meta.submission_id), lake.meta_name(meta.submission_id)):
            written[name] = store.stat(name).size
        return meta.submission_id

    submit("acme", "ioc_csv", ACME_CSV, "2026-11-01T08:00:00", name="acme-blocklist.csv")
    submit("globex", "stix2_bundle", json.dumps(GLOBEX_STIX, indent=1), "2026-11-02T09:30:00")
    submit("initech", "misp_event", json.dumps(INITECH_MISP), "2026-11-02T10:00:00", timezone="America/New_York")
    submit("acme", "ioc_csv", ACME_CSV_LATER, "2026-11-03T08:00:00", name="acme-update.csv")
    submit("umbrella", "openioc_xml", OPENIOC_XML, "2026-11-03T12:00:00")
    tampered = submit("acme", "ioc_csv", ACME_CSV_LATER, "2026-11-04T08:00:00", name="tampered.csv")
    blob = bytearray(store.read_bytes(lake.blob_name(tampered)))
    blob[-5] ^= 0x01
    store.write_bytes(lake.blob_name(tampered), bytes(blob))
    submit("globex", "stix2_bundle", json.dumps(GLOBEX_STIX), "2026-11-04T09:00:00", key=other)
    submit("umbrella", "misp_event", _deep_json(200), "2026-11-04T10:00:00")
    submit("initech", "misp_event", json.dumps(_reordered(INITECH_MISP)), "2026-11-05T10:00:00")
    return written
