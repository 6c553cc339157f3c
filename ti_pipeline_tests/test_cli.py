import subprocess
import sys

from ti_pipeline.cli import main
from ti_pipeline.core import migrations

DUMP_TABLES = ("ioc_file_hashes", "ioc_domains", "ioc_tokens", "ioc_ips", "file_extension_classification")


def test_demo_on_embedded_defaults_fills_every_dump_table(data_dir, capsys):
    assert main(["demo", "--docs-per-shard", "60"]) == 0
    out = capsys.readouterr().out
    counts = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in out.splitlines()
              if line.split() and line.split()[0] in DUMP_TABLES}
    assert set(counts) == set(DUMP_TABLES) and all(counts.values()), out
    assert (data_dir / "warehouse.sqlite").is_file()
    assert (data_dir / "sage_dump" / "cr-mongo-shard-r01.cybereason.net" / "cybereason" / "TOKENS.bson").is_file()


def test_sample_data_is_deterministic(data_dir, capsys):
    main(["sample-data", "--docs-per-shard", "30"])
    first = (data_dir / "sage_dump" / "cr-mongo-shard-r02.cybereason.net" / "cybereason" / "file_rep.bson").read_bytes()
    main(["sample-data", "--docs-per-shard", "30"])
    assert (data_dir / "sage_dump" / "cr-mongo-shard-r02.cybereason.net" / "cybereason" / "file_rep.bson").read_bytes() == first


def test_migrate_prints_only_its_revisions_when_logging_is_configured(tmp_path):
    """As in a run, where a root handler exists: Alembic's progress lines must not reach it."""
    url = f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    code = ("import logging\nlogging.basicConfig(level=logging.DEBUG)\nfrom ti_pipeline.cli import main\n"
            f"raise SystemExit(main(['migrate', '--url', {url!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"warehouse: {url}\nrevision: none -> {migrations.head()}\n", "")
