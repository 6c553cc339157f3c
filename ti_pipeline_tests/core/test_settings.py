"""The settings table is the one list of environment names: nothing reads the environment beside it,
no ``TI_*`` name lives outside it, and docs/configuration.md shows exactly it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dagster import EnvVar

from ti_pipeline.core import settings
from ti_pipeline.core.settings import SETTINGS, Rule, UnderDataDir

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"
# Where a name can appear: the code, its tests and benches, the docs, the deployment and the build.
SCANNED = ["ti_pipeline", "ti_pipeline_tests", "bench", "deploy", "docs", "scripts", ".ci", "README.md", "Makefile",
           "pyproject.toml", "dagster.yaml", "workspace.yaml"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ""}
NAME = re.compile(r"\bTI_[A-Z0-9_]*")
BEGIN, END = "<!-- settings table: generated from ti_pipeline/core/settings.py, do not edit by hand -->\n", \
    "<!-- end of settings table -->"


def _files() -> list[Path]:
    found = []
    for entry in SCANNED:
        path = ROOT / entry
        candidates = [path] if path.is_file() else path.rglob("*")
        found += [p for p in candidates if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return found


def test_every_ti_name_in_the_repository_is_in_the_table():
    unknown = {}
    for path in _files():
        for name in NAME.findall(path.read_text(encoding="utf-8", errors="replace")):
            # A prefix (``TI_TIDB_*``, ``startswith("TI_")``) must name at least one entry.
            known = any(n.startswith(name) for n in SETTINGS) if name.endswith("_") else name in SETTINGS
            if not known:
                unknown.setdefault(name, str(path.relative_to(ROOT)))
    assert unknown == {}


def test_only_the_settings_module_reads_the_environment():
    readers = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "ti_pipeline").rglob("*.py")
        if re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text(encoding="utf-8"))
    ]
    assert readers == ["ti_pipeline/core/settings.py"]


def test_the_docs_show_the_table_exactly():
    text = DOCS.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    shown = text.split(BEGIN)[1].split(END)[0]
    assert shown == settings.markdown_table(), "run `.venv/bin/python -m ti_pipeline.core.settings` and paste it"
    assert re.findall(r"^\| `([A-Z0-9_]+)` \|", shown, flags=re.M) == list(SETTINGS)


def test_secrets_have_no_value_as_default():
    for s in SETTINGS.values():
        if s.secret:
            assert s.default is None or isinstance(s.default, Rule | UnderDataDir), s.name


def test_defaults_live_under_the_data_dir(data_dir):
    assert settings.data_dir() == data_dir
    assert settings.resolve("TI_WAREHOUSE_URL") == f"sqlite:///{data_dir / 'warehouse.sqlite'}"
    assert settings.resolve("TI_EXPORT_URI") == (data_dir / "export").as_uri()
    assert settings.resolve("TI_SUBMISSIONS_PRIVATE_KEY_FILE") == str(data_dir / "keys" / "submissions_private.pem")
    assert settings.integer("TI_TIDB_STATUS_PORT") == 10080
    assert settings.text("TI_TIDB_HOST") is None


def test_explicit_then_environment_then_default(data_dir, monkeypatch):
    assert settings.resolve("TI_LOADER") == "sql"
    monkeypatch.setenv("TI_LOADER", "lightning")
    assert settings.resolve("TI_LOADER") == "lightning"
    assert settings.resolve("TI_LOADER", "import_into") == "import_into"
    monkeypatch.setenv("TI_TIDB_PORT", "4001")
    assert settings.integer("TI_TIDB_PORT") == 4001
    monkeypatch.setenv("TI_TIDB_PORT", "four")
    with pytest.raises(ValueError, match="TI_TIDB_PORT must be an integer, not 'four'"):
        settings.integer("TI_TIDB_PORT")
    with pytest.raises(KeyError, match="NOT_A_SETTING is not in the settings table"):
        settings.text("NOT_A_SETTING")


def test_override_restores_the_environment(data_dir, monkeypatch):
    monkeypatch.setenv("TI_MALPEDIA_URL", "http://before")
    with settings.override({"TI_MALPEDIA_URL": "http://during", "TI_MALPEDIA_REQUESTS_PER_MINUTE": "5"}):
        assert (settings.text("TI_MALPEDIA_URL"), settings.integer("TI_MALPEDIA_REQUESTS_PER_MINUTE")) == ("http://during", 5)
    assert (settings.text("TI_MALPEDIA_URL"), settings.integer("TI_MALPEDIA_REQUESTS_PER_MINUTE")) == ("http://before", 60)


def _env_vars(resources: dict) -> set[str]:
    """The names of the ``EnvVar`` (and ``EnvVar.int``) fields of ``resources``."""
    return {
        value.env_var_name
        for resource in resources.values()
        for value in resource.__dict__.values()
        if isinstance(value, EnvVar) or hasattr(value, "env_var_name")
    }


def test_resources_take_every_set_pipeline_name_as_an_env_var(data_dir, monkeypatch):
    """Set every name a resource reads: each arrives as ``EnvVar`` (the launchpad shows it), secrets too."""
    from ti_pipeline.defs.resources import build_resources

    assert _env_vars(build_resources()) == set()
    not_in_resources = {"TI_DATA_DIR", "TI_SAGE_SHARD_DIR"}  # the defaults' root; the dump assets' run config
    not_in_resources.add("TI_VT_FRESHNESS_DEADLINE_CRON")  # read once when the code location loads (a check's deadline)
    not_in_resources.add("TI_STEP_RETRIES")  # read once when the code location loads (the assets' retry policy)
    # read once when the code location loads: where the assets' code references link to
    not_in_resources |= {"TI_CODE_REPOSITORY_URL", "TI_CODE_REPOSITORY_BRANCH", "TI_CODE_REPOSITORY_PATH"}
    names = {s.name for s in SETTINGS.values() if s.scope == "pipeline"} - not_in_resources
    for name in names:
        monkeypatch.setenv(name, "1" if SETTINGS[name].kind == "int" else f"value-of-{name}")
    assert _env_vars(build_resources()) == names


def test_the_loader_settings_default_to_the_table_and_hide_the_password(data_dir, monkeypatch):
    from ti_pipeline.vt_feed.load import LoadSettings

    monkeypatch.setenv("TI_LOADER", "lightning")
    loaded = LoadSettings(tidb_password="s3cret")
    assert (loaded.loader, loaded.lightning_bin, loaded.tidb_status_port) == ("lightning", "tidb-lightning", 10080)
    assert loaded.sorted_kv_dir == str(data_dir / "lightning-sorted-kv")
    assert "s3cret" not in repr(loaded)
    monkeypatch.setenv("TI_TIDB_PASSWORD", "from-env")
    assert LoadSettings().tidb_password is None  # a secret reaches a run only as the resource's EnvVar
