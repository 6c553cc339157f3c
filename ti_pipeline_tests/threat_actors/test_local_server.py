"""The loopback server serves the Malpedia API shape from the real galaxy data."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from ti_pipeline.sample_data.malpedia_galaxy import MalpediaSnapshot, actor_id
from ti_pipeline.sample_data.malpedia_server import LocalMalpediaServer, load_snapshot, serving


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_snapshot_holds_the_galaxy_actors_and_families(full_snapshot):
    snapshot = full_snapshot
    assert len(snapshot.actors) == 864
    assert len(snapshot.families) == 3260
    assert actor_id("Lazarus Group") == "lazarus_group"
    # The actor -> family links of the galaxy become both sides of Malpedia's attribution.
    linked = {fid for a in snapshot.actors.values() for fid in a["families"]}
    assert linked and all(snapshot.families[f]["attribution"] for f in linked)


def test_endpoints(malpedia_server, snapshot):
    base = malpedia_server.base_url
    assert get(f"{base}/get/version") == {"version": snapshot.version, "date": snapshot.date}
    assert get(f"{base}/list/actors") == sorted(snapshot.actors)
    with_families = next(k for k, a in snapshot.actors.items() if a["families"])
    actor = get(f"{base}/get/actor/{with_families}")
    assert set(actor["families"]) == set(snapshot.actors[with_families]["families"])
    family_id = next(iter(actor["families"]))
    assert actor["families"][family_id] == snapshot.families[family_id]
    assert get(f"{base}/get/family/{family_id}") == snapshot.families[family_id]
    assert get(f"{base}/get/families").keys() == snapshot.families.keys()
    with pytest.raises(urllib.error.HTTPError) as err:
        get(f"{base}/get/family/win.nothing")
    assert err.value.code == 404


def test_injected_failures_answer_once_per_injection(malpedia_server):
    malpedia_server.fail("/api/get/version", status=429, retry_after="3")
    with pytest.raises(urllib.error.HTTPError) as err:
        get(f"{malpedia_server.base_url}/get/version")
    assert err.value.code == 429 and err.value.headers["Retry-After"] == "3"
    assert get(f"{malpedia_server.base_url}/get/version")["version"]
    assert malpedia_server.requests == ["/api/get/version", "/api/get/version"]


def test_snapshot_file_round_trip(tmp_path, snapshot):
    path = tmp_path / "snapshot.json"
    snapshot.actors["apt28"]["description"] = "edited"
    path.write_text(snapshot.to_json(), encoding="utf-8")
    loaded = load_snapshot(path)
    assert loaded == MalpediaSnapshot.from_json(snapshot.to_json())
    assert loaded.actors["apt28"]["description"] == "edited"
    with LocalMalpediaServer(loaded) as server:
        assert get(f"{server.base_url}/get/actor/apt28")["description"] == "edited"


def test_serving_points_the_url_at_the_loopback_server_and_restores_it(tmp_path, monkeypatch, snapshot):
    monkeypatch.setenv("TI_MALPEDIA_URL", "https://example.invalid/api")
    monkeypatch.delenv("TI_MALPEDIA_REQUESTS_PER_MINUTE", raising=False)
    path = tmp_path / "snapshot.json"
    path.write_text(snapshot.to_json(), encoding="utf-8")
    with serving(path) as server:
        assert os.environ["TI_MALPEDIA_URL"] == server.base_url
        assert int(os.environ["TI_MALPEDIA_REQUESTS_PER_MINUTE"]) > 60
        assert get(f"{server.base_url}/list/actors") == sorted(snapshot.actors)
    assert os.environ["TI_MALPEDIA_URL"] == "https://example.invalid/api"
    assert "TI_MALPEDIA_REQUESTS_PER_MINUTE" not in os.environ
