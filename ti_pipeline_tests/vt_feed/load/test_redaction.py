"""The TiDB password never shows, in any form: raw, TOML/JSON/repr escaped or URL-encoded.

The expected texts are written out by hand, not computed with the code under test.
"""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, EnvVar, materialize, serialize_value

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.defs.resources import LoaderResource, ObjectStoreResource, WarehouseResource
from ti_pipeline.defs.vt_feed.load import vt_ioc_file_hashes
from ti_pipeline.vt_feed.load import LoaderError, LoadSettings, load_day
from ti_pipeline.vt_feed.load.runner import redact
from ti_pipeline.vt_feed.load.tidb import tidb_target
from ti_pipeline_tests.vt_feed.load.exportdata import classification, report, write_day
from ti_pipeline_tests.vt_feed.load.test_lightning import stand_in

PASSWORD = 'p"a\\ss%w@rd'  # p"a\ss%w@rd


def leaks(text: str) -> list[str]:
    """Pieces of the password found in ``text``: its tail as written raw or backslash-escaped (TOML,
    JSON, repr, escaped twice), or percent-encoded (once or twice, either hex case)."""
    return [piece for piece in ("ss%w@rd", "ss%25") if piece in text]


def test_every_form_of_the_password_is_masked():
    url = sa.URL.create("mysql+pymysql", "loader", PASSWORD, "tidb", 4000, "threat_intel")
    text = (
        'raw p"a\\ss%w@rd | toml password = "p\\"a\\\\ss%w@rd" | literal \'p"a\\ss%w@rd\''
        " | quote p%22a%5Css%25w%40rd | lower p%22a%5css%25w%40rd | repr 'p\"a\\\\ss%w@rd'"
        f" | url {url.render_as_string(hide_password=False)}"
    )
    assert redact(text, [PASSWORD]) == (
        'raw ****** | toml password = "******" | literal \'******\''
        " | quote ****** | lower ****** | repr '******'"
        " | url mysql+pymysql://loader:******@tidb:4000/threat_intel"
    )


def test_url_forms_of_a_password_with_spaces_slashes_and_plus():
    secret = "a b/c+d"
    text = "quote a%20b%2Fc%2Bd path a%20b/c%2Bd lower a%20b%2fc%2bd plus a+b%2Fc%2Bd sqlalchemy a b%2Fc+d"
    assert redact(text, [secret]) == "quote ****** path ****** lower ****** plus ****** sqlalchemy ******"


def test_the_longest_form_is_masked_whole():
    """``ab%`` is the start of its own URL form ``ab%25``: no ``25`` is left behind."""
    assert redact("x ab%25 y ab% z", ["ab%"]) == "x ****** y ****** z"


def test_a_form_escaped_twice_is_masked():
    """A JSON log line of the tool quoted in an exception's repr: backslashes doubled twice."""
    line = '{"password": "p\\"a\\\\ss%w@rd"}'
    text = str(RuntimeError(("tool said", line)))
    assert text == "('tool said', '{\"password\": \"p\\\\\"a\\\\\\\\ss%w@rd\"}')"
    assert redact(text, [PASSWORD]) == "('tool said', '{\"password\": \"******\"}')"


def test_a_url_in_an_error_hides_its_password():
    url = sa.make_url("mysql+pymysql://loader:p%22a%5Css%25w%40rd@tidb:4000")
    with pytest.raises(ValueError) as err:
        tidb_target(url, LoadSettings())
    assert str(err.value) == "the warehouse URL mysql+pymysql://loader:***@tidb:4000 names no database"


def test_no_secret_leaves_the_text_as_is():
    assert redact("nothing to hide", []) == redact("nothing to hide", [""]) == "nothing to hide"


# Echoes its config (the password TOML-escaped) and the password in every form, on stdout and
# stderr, then fails the way tidb-lightning does when TiDB refuses the login.
LEAKY_LIGHTNING = """
    import json, pathlib, sys, tomllib, urllib.parse
    text = pathlib.Path(sys.argv[sys.argv.index("--config") + 1]).read_text()
    pw = tomllib.loads(text)["tidb"]["password"]
    print(text, flush=True)
    print(f"[INFO] raw={pw} literal='{pw}' json={json.dumps(pw)} repr={pw!r}", file=sys.stderr, flush=True)
    quoted = urllib.parse.quote(pw, safe="")
    print(f"[INFO] url={quoted} lower={quoted.lower()} plus={urllib.parse.quote_plus(pw)}", file=sys.stderr, flush=True)
    print(f"[ERROR] [main.go] Error 1045: Access denied (password {json.dumps(pw)}, dsn loader:{quoted}@tcp(127.0.0.1:4000)/)", flush=True)
    sys.exit(1)
"""
EXPECTED_ERROR = (
    'tidb-lightning exited with status 1: [ERROR] [main.go] Error 1045: Access denied (password "******", '
    "dsn loader:******@tcp(127.0.0.1:4000)/)"
)


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_failing_lightning_shows_no_form_of_the_password(tmp_path, store, warehouse, caplog):
    write_day(store, "2024-01-01", [report(0, "2024-01-01 10:00:00")], [classification(0, "MALWARE")])
    settings = LoadSettings(
        loader="lightning",
        lightning_bin=stand_in(tmp_path, LEAKY_LIGHTNING),
        sorted_kv_dir=str(tmp_path / "kv"),
        tidb_password=PASSWORD,
    )
    with caplog.at_level(logging.INFO, logger="test.lightning"), pytest.raises(LoaderError) as err:
        load_day(warehouse, store, "2024-01-01", settings, log=logging.getLogger("test.lightning"), quarantine=lambda r: None)

    assert str(err.value) == EXPECTED_ERROR
    assert leaks(caplog.text) == []
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count('tidb-lightning: password = "******"') == 1  # the config the tool echoed
    assert "tidb-lightning: [INFO] raw=****** literal='******' json=\"******\" repr='******'" in messages
    assert "tidb-lightning: [INFO] url=****** lower=****** plus=******" in messages
    [task_log] = [m for m in messages if m.startswith("tidb-lightning task for ")]
    assert 'password = "******"' in task_log


def test_the_dagster_run_shows_no_form_of_the_password(tmp_path, sqlite_url, data_dir, monkeypatch):
    monkeypatch.setenv("TI_TIDB_PASSWORD", PASSWORD)
    store = LocalStore(tmp_path / "export")
    write_day(store, "2024-01-01", [report(0, "2024-01-01 10:00:00")], [classification(0, "MALWARE")])
    instance = DagsterInstance.ephemeral()

    result = materialize(
        [vt_ioc_file_hashes],
        partition_key="2024-01-01",
        instance=instance,
        raise_on_error=False,
        resources={
            "warehouse": WarehouseResource(url=sqlite_url),
            "export_store": ObjectStoreResource(setting="TI_EXPORT_URI", uri=store.uri),
            "loader": LoaderResource(
                loader="lightning",
                lightning_bin=stand_in(tmp_path, LEAKY_LIGHTNING),
                sorted_kv_dir=str(tmp_path / "kv"),
                tidb_password=EnvVar("TI_TIDB_PASSWORD"),
            ),
        },
    )

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.user_failure_data.description == EXPECTED_ERROR
    # Everything the UI can show of the run: every log line, event and error (with causes and stacks).
    stored = "\n".join(serialize_value(entry) for entry in instance.all_logs(result.run_id))
    assert leaks(stored) == []
    assert "[INFO] raw=****** literal='******'" in stored
