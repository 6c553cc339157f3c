"""A sample submissions lake: a key pair and one submission per case the archive must handle.

Every parser (CSV; STIX 2.1 with patterns as organisations write them, some of which a list of values
cannot express; MISP with attributes not meant for detection), a later CSV that changes an earlier
action (latest wins), an unknown typetag (NOT_SUPPORTED), a tampered blob, a blob encrypted for another
key and a deeply nested payload (ERROR), and a resubmission of the MISP event in another order
(recognised as duplicate).
The same seed and key always write the same bytes.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

from Crypto.PublicKey import RSA

from ti_pipeline.core.objectstore import ObjectStore
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

# Indicators as organisations write them: hashes and a C2 name in one pattern, a URL, an IPv6 allow;
# a correlation (AND), a beaconing rule (qualifier) and an expired indicator stay out of customer_ioc.
GLOBEX_STIX = {
    "type": "bundle",
    "id": "bundle--8f2c2f3e-0c5d-4a43-9b8e-3f0f3c1f2a10",
    "objects": [
        {"type": "identity", "spec_version": "2.1", "id": "identity--5c3a1b4e-2f0d-4d8e-9a71-0b6c2e4f8a10",
         "created": "2026-10-30T08:00:00.000Z", "modified": "2026-10-30T08:00:00.000Z",
         "name": "Globex SOC", "identity_class": "organization"},
        {
            "type": "indicator",
            "spec_version": "2.1",
            "id": "indicator--0f6a3c8e-7a41-4b2e-9d55-3e8c1a2b4c01",
            "created": "2026-10-31T14:02:11.000Z",
            "modified": "2026-10-31T14:02:11.000Z",
            "name": "GlobexLoader dropper and C2",
            "indicator_types": ["malicious-activity"],
            "pattern_type": "stix",
            "pattern_version": "2.1",
            "pattern": f"[file:hashes.'SHA-256' = '{SHA256_B}'] OR "
                       "[domain-name:value = 'Login-Globex.example']",
            "valid_from": "2026-10-31T14:02:11Z",
        },
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--0f6a3c8e-7a41-4b2e-9d55-3e8c1a2b4c02",
         "name": "Loader hashes", "pattern_type": "stix",
         "pattern": f"[file:hashes.MD5 = '{MD5_A}' OR file:hashes.'SHA-1' = '{SHA1_A}']",
         "valid_from": "2026-10-31T14:02:11Z"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--0f6a3c8e-7a41-4b2e-9d55-3e8c1a2b4c03",
         "name": "C2 v4", "pattern_type": "stix", "pattern": "[ipv4-addr:value = '192.0.2.44']",
         "valid_from": "2026-10-31T14:02:11Z"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--0f6a3c8e-7a41-4b2e-9d55-3e8c1a2b4c04",
         "name": "Partner VPN", "indicator_types": ["benign"], "pattern_type": "stix",
         "pattern": "[ipv6-addr:value = '2001:DB8:0:0::1']", "valid_from": "2026-01-01T00:00:00Z"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--0f6a3c8e-7a41-4b2e-9d55-3e8c1a2b4c05",
         "name": "Old", "revoked": True, "pattern_type": "stix",
         "pattern": "[domain-name:value = 'old.example']",
         "valid_from": "2025-01-01T00:00:00Z"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--0f6a3c8e-7a41-4b2e-9d55-3e8c1a2b4c06",
         "name": "Loader beacon to its C2 port", "pattern_type": "stix",
         "pattern": "[network-traffic:dst_ref.value = '198.51.100.9' AND network-traffic:dst_port = 8443]",
         "valid_from": "2026-10-31T14:02:11Z"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--0f6a3c8e-7a41-4b2e-9d55-3e8c1a2b4c07",
         "name": "Second stage download", "pattern_type": "stix",
         "pattern": "[url:value = 'http://Update.Globex-Loader.example/Payload.bin']",
         "valid_from": "2026-10-31T14:02:11Z"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--0f6a3c8e-7a41-4b2e-9d55-3e8c1a2b4c08",
         "name": "Beaconing", "pattern_type": "stix",
         "pattern": "[domain-name:value = 'beacon.globex-loader.example'] REPEATS 5 TIMES WITHIN 600 SECONDS",
         "valid_from": "2026-10-31T14:02:11Z"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--0f6a3c8e-7a41-4b2e-9d55-3e8c1a2b4c09",
         "name": "Spring campaign C2", "pattern_type": "stix", "pattern": "[ipv4-addr:value = '192.0.2.99']",
         "valid_from": "2026-03-01T00:00:00Z", "valid_until": "2026-06-30T00:00:00Z"},
        {"type": "malware", "spec_version": "2.1", "id": "malware--6d2e4a1c-3b5f-4e7a-8c9d-1f2a3b4c5d6e",
         "name": "GlobexLoader", "is_family": True},
    ],
}

INITECH_MISP = {
    "Event": {
        "info": "Initech incident 42",
        "Tag": [{"name": "tlp:amber"}],
        "Attribute": [
            {"type": "md5", "value": MD5_A.upper(), "comment": "dropper", "to_ids": True},
            {"type": "sha1", "value": SHA1_A, "to_ids": True},
            {"type": "sha256", "value": SHA256_B, "to_ids": True},
            {"type": "domain", "value": "exfil.initech.example", "to_ids": True},
            {"type": "hostname", "value": "mail.initech.example", "to_ids": False,
             "Tag": [{"name": "allowlist"}]},
            {"type": "ip-src", "value": "198.51.100.23", "to_ids": True},
            {"type": "ip-dst", "value": "999.1.1.1", "to_ids": True},
            {"type": "url", "value": "http://exfil.initech.example/upload", "to_ids": True},
            {"type": "domain", "value": "gone.example", "deleted": True},
            {"type": "domain", "value": "cdn.initech-partner.example", "comment": "seen, benign",
             "to_ids": False},
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
