import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, Definitions

from ti_pipeline.definitions import defs

ROOT = Path(__file__).resolve().parents[1]


def test_code_location_loads():
    Definitions.validate_loadable(defs)
    keys = {k for a in defs.assets for k in a.keys}
    assert {AssetKey(["sage_dump", n]) for n in ("ioc_file_hashes", "ioc_domains", "ioc_tokens", "ioc_ips",
                                               "file_extension_classification")} <= keys


def test_one_name_per_domain():
    """Package, defs module, group and key prefix are one name: every key is <domain>/<name>."""
    graph = defs.resolve_asset_graph()
    by_domain: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        domain, name = key.path
        assert graph.get(key).group_name == domain
        by_domain.setdefault(domain, set()).add(name)
    assert by_domain == {
        "sage_dump": {"ioc_file_hashes", "ioc_domains", "ioc_tokens", "ioc_ips", "file_extension_classification"},
        "vt_feed": {"vt_file_reports", "broccoli_classifications", "ioc_file_hashes"},
        "threat_actors": {"threat_actors", "malware_families", "actor_techniques"},
        "submissions": {"customer_ioc"},
    }
    for domain in by_domain:
        assert (ROOT / "ti_pipeline" / domain).is_dir()
        assert (ROOT / "ti_pipeline" / "defs" / domain).is_dir() or (ROOT / "ti_pipeline" / "defs" / f"{domain}.py").is_file()


def test_dagster_definitions_validate_cli(data_dir):
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr
