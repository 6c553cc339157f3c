import json
from datetime import datetime

from ti_pipeline.cli import main
from ti_pipeline.core import schema
from ti_pipeline.core.lookup import indicator_kind, lookup
from ti_pipeline.core.warehouse import Warehouse

SHA256, SHA1 = "ab" * 32, "cd" * 20
NOW = datetime(2020, 11, 5)


def fill(wh: Warehouse) -> None:
    wh.upsert(schema.ioc_file_hashes, [{
        "sha256": bytes.fromhex(SHA256), "sha1": bytes.fromhex(SHA1), "md5": None, "classification": "MALWARE",
        "source": "VIRUS_TOTAL", "detection_names": "EngineA:Trojan.Emotet.12;EngineB:Gen:Variant.X",
        "scan_date": NOW, "positives": 2, "total": 70}])
    wh.upsert(schema.malware_families, [
        {"family_id": "win.emotet", "common_name": "Emotet", "alt_names": '["Geodo", "Heodo"]',
         "attribution": '["TA542"]', "content_hash": "h", "removed": False, "created_at": NOW, "last_updated": NOW},
        {"family_id": "win.zeus", "common_name": "Zeus", "alt_names": "[]", "attribution": '["X"]',
         "content_hash": "h", "removed": False, "created_at": NOW, "last_updated": NOW},
    ])
    wh.upsert(schema.threat_actors, [{"actor_id": "ta542", "name": "TA542", "country": None, "content_hash": "h",
                                      "removed": False, "created_at": NOW, "last_updated": NOW}])
    wh.upsert(schema.actor_techniques, [
        {"actor_id": "ta542", "technique_id": t, "match_method": "name", "confidence": 0.9} for t in ("T1566", "T1059")])
    wh.upsert(schema.customer_ioc, [{"org_id": "acme", "ioc_type": "sha1", "value": SHA1, "action": "ALLOW",
                                     "submission_id": "s1", "submitted_at": NOW}])


def test_kinds():
    assert indicator_kind(SHA256.upper()) == ("sha256", SHA256)
    assert indicator_kind(" 10.0.0.1 ") == ("ip", "10.0.0.1")
    assert indicator_kind("Evil.Example") == ("domain", "evil.example")
    assert indicator_kind("not a thing") == ("token", "not a thing")


def test_lookup_by_sha1_finds_reputation_customer_list_and_actor(warehouse):
    fill(warehouse)
    found = lookup(warehouse, SHA1.upper())
    assert [r["sha256"] for r in found["ioc_file_hashes"]] == [SHA256]
    assert found["ioc_file_hashes"][0]["scan_date"] == "2020-11-05 00:00:00"
    assert [(r["org_id"], r["action"]) for r in found["customer_ioc"]] == [("acme", "ALLOW")]
    assert found["actor_context"] == [
        {"family": "win.emotet", "name": "Emotet", "actors": [{"actor": "TA542", "country": None, "attack_techniques": 2}]}]


def test_cli_lookup_json_and_nothing_found(data_dir, capsys):
    wh = Warehouse(f"sqlite:///{data_dir / 'warehouse.sqlite'}")
    wh.ensure_schema()
    fill(wh)
    wh.dispose()
    assert main(["lookup", "--json", SHA256]) == 0
    assert json.loads(capsys.readouterr().out)["ioc_file_hashes"][0]["classification"] == "MALWARE"
    assert main(["lookup", "203.0.113.77"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "nothing in the warehouse"
