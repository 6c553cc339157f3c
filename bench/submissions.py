"""Benchmark the submissions path against its floor: plain decryption plus ``csv.reader``.

Writes ``--submissions`` CSV submissions of ``--rows`` rows each into a temporary lake, then times
(1) the floor: RSA-OAEP + AES-256-EAX decryption of every blob and ``csv.reader`` over the text,
(2) ``process_submission`` (decrypt, identity hash, parse, normalise, account) and
(3) the whole ``submissions/customer_ioc`` asset into a SQLite warehouse (listing, ledger, upserts, quarantine).
Prints rows/s of each and the ratios to the floor.
"""

import argparse
import csv
import io
import random
import sys
import tempfile
import time
from pathlib import Path

from Crypto.PublicKey import RSA
from dagster import DagsterInstance, materialize

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.defs.resources import ObjectStoreResource, PrivateKeyFileResource, WarehouseResource
from ti_pipeline.defs.submissions.assets import customer_ioc
from ti_pipeline.submissions import crypto, lake
from ti_pipeline.submissions.process import process_submission


def payload(rng: random.Random, rows: int) -> bytes:
    out = ["type,value,action,comment"]
    for i in range(rows):
        kind = i % 4
        if kind == 0:
            out.append(f"sha256,{rng.randbytes(32).hex()},block,row {i}")
        elif kind == 1:
            out.append(f"md5,{rng.randbytes(16).hex().upper()},block,")
        elif kind == 2:
            out.append(f"domain,host{rng.randrange(10**9)}.example.com,block,phishing")
        else:
            out.append(f"ip,10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255},allow,")
    return ("\n".join(out) + "\n").encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=40)
    parser.add_argument("--rows", type=int, default=2000, help="rows per submission")
    args = parser.parse_args()

    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key = RSA.import_key(crypto.generate_key_pair(randfunc=rng.randbytes)[0])
        key_file = root / "private.pem"
        crypto.write_private_key(key_file, key.export_key())
        store = LocalStore(root / "lake")
        metas = [
            lake.write_submission(store, org_id=f"org{i % 5}", typetag="ioc_csv", payload=payload(rng, args.rows),
                                  public_key=key.publickey())
            for i in range(args.submissions)
        ]
        blobs = [store.read_bytes(lake.blob_name(m.submission_id)) for m in metas]
        total_rows = args.submissions * args.rows
        mib = sum(map(len, blobs)) / 2**20

        started = time.perf_counter()
        floor_rows = 0
        for blob in blobs:
            floor_rows += sum(1 for _ in csv.reader(io.StringIO(crypto.decrypt(blob, key).decode()))) - 1
        floor = time.perf_counter() - started

        started = time.perf_counter()
        written = 0
        for meta, blob in zip(metas, blobs, strict=True):
            outcome = process_submission(meta, blob, key, source="bench", find_duplicate=lambda *_: None)
            written += outcome.accounting.written
        pure = time.perf_counter() - started

        resources = {
            "warehouse": WarehouseResource(url=f"sqlite:///{root / 'warehouse.sqlite'}"),
            "submissions_lake": ObjectStoreResource(setting="TI_SUBMISSIONS_URI", uri=store.uri),
            "submissions_private_key": PrivateKeyFileResource(setting="TI_SUBMISSIONS_PRIVATE_KEY_FILE",
                                                              path=str(key_file)),
        }
        started = time.perf_counter()
        result = materialize([customer_ioc], resources=resources, instance=DagsterInstance.ephemeral())
        asset = time.perf_counter() - started
        assert result.success and floor_rows == total_rows and written == total_rows

    print(f"{args.submissions} submissions x {args.rows} rows = {total_rows:,} rows, {mib:.1f} MiB of blobs")
    for label, seconds in [("floor: decrypt + csv.reader", floor), ("process_submission", pure),
                           ("customer_ioc asset -> SQLite", asset)]:
        print(f"{label:<32} {seconds:8.2f} s  {total_rows / seconds:>12,.0f} rows/s  "
              f"{args.submissions / seconds:8.1f} submissions/s  x{seconds / floor:.1f} of floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
