"""``ti-pipeline``: sample data, DDL for a DBA, the demo, and warehouse counts."""

from __future__ import annotations

import argparse
import sys

from ti_pipeline import settings


def _cmd_schema(args: argparse.Namespace) -> int:
    from ti_pipeline.schema import ddl

    sys.stdout.write(ddl(args.dialect))
    return 0


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from ti_pipeline.sample_data.all import write_all

    for name, size in write_all(docs_per_shard=args.docs_per_shard, seed=args.seed).items():
        print(f"{size:>12,}  {name}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ti_pipeline.demo import run_demo
    from ti_pipeline.sample_data.all import write_all

    print(f"sample data under {settings.data_dir()} ...")
    write_all(docs_per_shard=args.docs_per_shard, seed=0)
    counts = run_demo()
    _print_counts(counts)
    empty = [t for t in ("ioc_file_hashes", "ioc_domains", "ioc_tokens", "ioc_ips", "file_extension_classification") if not counts[t]]
    print(f"\nwarehouse: {settings.resolve('TI_WAREHOUSE_URL')}")
    print("open the UI with `make dev` (http://127.0.0.1:3000) to see the runs and their metadata.")
    return 1 if empty else 0


def _cmd_counts(_args: argparse.Namespace) -> int:
    from ti_pipeline.demo import table_counts

    _print_counts(table_counts())
    return 0


def _print_counts(counts: dict[str, int]) -> None:
    width = max(map(len, counts))
    print()
    for table, count in counts.items():
        print(f"{table:<{width}}  {count:>10,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ti-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("schema", help="print the CREATE statements of every table")
    p.add_argument("--dialect", choices=["mysql", "sqlite"], default="mysql")
    p.set_defaults(func=_cmd_schema)

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

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
