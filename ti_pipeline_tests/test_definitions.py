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


def test_dagster_definitions_validate_cli(data_dir):
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr
