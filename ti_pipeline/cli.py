"""``ti-pipeline``: sample data, DDL for a DBA, migrations, the demo, and warehouse counts."""

from __future__ import annotations

import argparse
import sys

from ti_pipeline.core import settings


def _cmd_schema(args: argparse.Namespace) -> int:
    """The SQL of the migrations up to head, as ``migrate`` runs it: what a DBA reviews or applies."""
    from ti_pipeline.core import migrations

    sys.stdout.write(migrations.offline_sql(args.dialect))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from ti_pipeline.core import migrations

    if args.revision:
        if not (args.message or args.replace):
            print("error: --revision needs -m MESSAGE (or --replace)", file=sys.stderr)
            return 2
        written = migrations.new_revision(args.message, replace=args.replace, scratch_url=args.url)
        print(written or "no change between schema.metadata and the migrations: nothing written")
        return 0
    url = settings.resolve("TI_WAREHOUSE_URL", args.url)
    print(f"warehouse: {sa.make_url(url).render_as_string(hide_password=True)}", flush=True)
    try:
        before, after = migrations.upgrade(url, stamp=args.stamp)
    except migrations.SchemaOutOfDate as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    print(f"revision: {before or 'none'} -> {after}" if before != after else f"revision: {after} (already at head)")
    return 0


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from ti_pipeline.sample_data.all import write_all

    for name, size in write_all(docs_per_shard=args.docs_per_shard, seed=args.seed).items():
        print(f"{size:>12,}  {name}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from ti_pipeline.sample_data.all import write_all
    from ti_pipeline.sample_data.demo import run_demo

    print(f"sample data under {settings.data_dir()} ...")
    write_all(docs_per_shard=args.docs_per_shard, seed=0)
    counts = run_demo()
    _print_counts(counts)
    empty = [t for t in ("ioc_file_hashes", "ioc_domains", "ioc_tokens", "ioc_ips", "file_extension_classification", "customer_ioc", "submission_ledger", "threat_actors", "malware_families", "actor_techniques") if not counts[t]]
    url = sa.make_url(settings.resolve("TI_WAREHOUSE_URL"))
    print(f"\nwarehouse: {url.render_as_string(hide_password=True)}")  # a secret setting: no password
    print("open the UI with `make dev` (http://127.0.0.1:3000) to see the runs and their metadata.")
    return 1 if empty else 0


def _cmd_counts(_args: argparse.Namespace) -> int:
    from ti_pipeline.sample_data.demo import table_counts

    _print_counts(table_counts())
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    """A new RSA key pair for submissions; the private key is written mode 0600 and never printed."""
    from pathlib import Path

    from ti_pipeline.submissions import crypto

    private = Path(args.private_key or settings.resolve("TI_SUBMISSIONS_PRIVATE_KEY_FILE"))
    public = Path(args.public_key) if args.public_key else crypto.default_public_key_path(private)
    for path in (private, public):
        if path.exists() and not args.force:
            print(f"error: {path} exists (use --force to replace it)", file=sys.stderr)
            return 2
    private_pem, public_pem = crypto.generate_key_pair(args.bits)
    crypto.write_private_key(private, private_pem)
    public.parent.mkdir(parents=True, exist_ok=True)
    public.write_bytes(public_pem)
    print(f"private key (mode 0600): {private}\npublic key (give it to the organisations): {public}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    """Encrypt a file for the archive's public key and publish it to the submissions lake."""
    from pathlib import Path

    from ti_pipeline.core.objectstore import open_store
    from ti_pipeline.submissions import crypto, lake

    try:
        public_key = crypto.import_public_key(Path(args.public_key).read_bytes())
        payload = Path(args.file).read_bytes()
        store = open_store(settings.resolve("TI_SUBMISSIONS_URI", args.uri))
        meta = lake.write_submission(
            store,
            org_id=args.org,
            typetag=args.typetag,
            payload=payload,
            public_key=public_key,
            timezone=args.timezone,
            name=Path(args.file).name,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{meta.submission_id}  {store.url_of(lake.meta_name(meta.submission_id))}")
    return 0


def _cmd_malpedia_server(args: argparse.Namespace) -> int:
    """Serve the Malpedia API on loopback from the sample snapshot (or the shipped galaxy data)."""
    from pathlib import Path

    from ti_pipeline.sample_data.malpedia import snapshot_path
    from ti_pipeline.sample_data.malpedia_server import serve_forever

    serve_forever(args.host, args.port, Path(args.snapshot) if args.snapshot else snapshot_path())
    return 0


def _cmd_lookup(args: argparse.Namespace) -> int:
    import json

    from ti_pipeline.core.lookup import lookup, render
    from ti_pipeline.core.warehouse import Warehouse

    warehouse = Warehouse(settings.resolve("TI_WAREHOUSE_URL"))
    found = lookup(warehouse, args.value)
    print(json.dumps(found, indent=2) if args.json else render(found))
    warehouse.dispose()
    return 0


def _print_counts(counts: dict[str, int]) -> None:
    width = max(map(len, counts))
    print()
    for table, count in counts.items():
        print(f"{table:<{width}}  {count:>10,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ti-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("schema", help="print the SQL that `migrate` runs on an empty warehouse (for a DBA)")
    p.add_argument("--dialect", choices=["mysql", "sqlite"], default="mysql")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("migrate", help="upgrade the warehouse to the schema revision of this code")
    p.add_argument("--url", help="warehouse (default: TI_WAREHOUSE_URL); with --revision, an empty scratch "
                   "database to compare against (default: a temporary SQLite, blind to ENUM values)")
    p.add_argument("--revision", action="store_true",
                   help="developers: write a new revision from schema.metadata's difference to the migrations")
    p.add_argument("-m", "--message", help="with --revision: what the revision changes")
    p.add_argument("--replace", action="store_true",
                   help="with --revision: regenerate the newest revision in place (only one no warehouse has applied)")
    p.add_argument("--stamp", action="store_true",
                   help="adopt a warehouse set up before migrations: compare its tables with the schema and, when "
                   "equal, record the current revision")
    p.set_defaults(func=_cmd_migrate)

    for name, func, helptext in (
        ("sample-data", _cmd_sample_data, "write deterministic sample inputs under TI_DATA_DIR (or the configured URIs)"),
        ("demo", _cmd_demo, "sample data, then materialize every asset and partition, then print table counts"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--docs-per-shard", type=int, default=2000, help="size knob: file_rep documents per shard")
        if name == "sample-data":
            p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=func)

    p = sub.add_parser("counts", help="rows per warehouse table")
    p.set_defaults(func=_cmd_counts)

    p = sub.add_parser("lookup", help="what the warehouse holds about a hash, domain or IP (and its actors)")
    p.add_argument("value")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_lookup)

    p = sub.add_parser("keygen", help="make the RSA key pair of the submissions archive (private key mode 0600)")
    p.add_argument("--private-key", help="default: TI_SUBMISSIONS_PRIVATE_KEY_FILE")
    p.add_argument("--public-key", help="default: beside the private key, 'private' replaced by 'public'")
    p.add_argument("--bits", type=int, default=2048)
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("submit", help="encrypt a file for the archive's public key and upload it (Cybex-P format)")
    p.add_argument("--org", required=True, help="organisation id")
    p.add_argument("--typetag", required=True, help="payload type: ioc_csv, stix2_bundle, misp_event")
    p.add_argument("--public-key", required=True, help="the archive's public key (PEM)")
    p.add_argument("--timezone", default="UTC", help="IANA zone of naive timestamps in the payload")
    p.add_argument("--uri", help="submissions lake (default: TI_SUBMISSIONS_URI)")
    p.add_argument("file")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser(
        "malpedia-server",
        help="serve the Malpedia API on loopback from the sample snapshot (point TI_MALPEDIA_URL at it)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--snapshot", help="snapshot JSON (default: the one `sample-data` wrote, else the shipped galaxy)")
    p.set_defaults(func=_cmd_malpedia_server)

    from ti_pipeline.defs import worker

    p = sub.add_parser("worker", help="a Celery worker for the *_on_celery jobs (docs/deployment.md)",
                       description=worker.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    worker.build_parser(p)
    p.set_defaults(func=worker.run)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
