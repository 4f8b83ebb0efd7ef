"""Peak memory and time of publishing one big day to SQLite: in one table against in chunks of `day_chunk_rows`.

    python benchmarks/publish_memory.py --rows 5000000 --chunk-rows 1000000

Writes a synthetic day of `--rows` raw rows (card columns; 0.5% of them never scored, as if quarantined) and its
predictions to Parquet storage in a temporary folder, in batches, in a process of its own. Then, each in a fresh
process and into a fresh SQLite database, publishes the day as the `published_predictions` stage does
(`publishable_rows` joined into `PredictionDatabaseResource.replace_partition`): once with `day_chunk_rows` above
the day's size (today's single join and table), once with `--chunk-rows` (buckets on local disk, joined and loaded
chunk by chunk). For each: the peak RSS of the process (getrusage), its RSS before publishing, the seconds the
publication took, and the rows in the database afterwards. The storage and spill files live under `--workdir`
(default: the system's temp folder).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchinfer_assets.assets._run import DayState
from batchinfer_assets.assets.published_predictions import publishable_rows
from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.domains.card_transactions.synthetic import MERCHANT_CATEGORIES
from batchinfer_assets.resources.prediction_db import PredictionDatabaseResource
from batchinfer_assets.tables import PREDICTIONS, RAW_TRANSACTIONS

DAY = "2025-01-01"
BATCH_ROWS = 500_000


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def write_day(storage: Path, rows: int) -> None:
    """The day's raw rows and predictions, batch by batch (ids in landing order; every 200th row never scored)."""
    store = PartitionedParquetStore(storage)
    rng = np.random.default_rng(25)
    raw_schema = pa.schema([(name, type_) for name, type_ in CARD.landing_columns.items()])
    predictions_schema = pa.schema(
        [("transaction_id", pa.string()), ("score", pa.float32()), ("label", pa.int8()), ("model_name", pa.string()), ("model_version", pa.string())]
    )
    with store.partition_writer(RAW_TRANSACTIONS, DAY, raw_schema) as raw, store.partition_writer(PREDICTIONS, DAY, predictions_schema) as predictions:
        for start in range(0, rows, BATCH_ROWS):
            n = min(BATCH_ROWS, rows - start)
            numbers = pa.array(np.arange(start, start + n)).cast(pa.string())
            ids = pc.binary_join_element_wise("20250101-", pc.utf8_lpad(numbers, 9, "0"), "")
            micros = rng.integers(0, 86_400_000_000, n)
            columns = {
                "transaction_id": ids,
                "event_time": pa.array(np.datetime64(DAY, "us") + micros.astype("timedelta64[us]")).cast(pa.timestamp("us", tz="UTC")),
                "customer_id": pc.binary_join_element_wise("C", pc.utf8_lpad(pa.array(rng.integers(0, rows // 5 + 1, n)).cast(pa.string()), 8, "0"), ""),
                "merchant_category": pa.array(np.array(MERCHANT_CATEGORIES)[rng.integers(0, len(MERCHANT_CATEGORIES), n)]),
                "amount": pa.array(np.round(rng.lognormal(3.0, 1.0, n), 2)),
                "currency": pa.array(["EUR"] * n),
                "channel": pa.array(np.array(["pos", "online", "atm"])[rng.integers(0, 3, n)]),
                "country": pa.array(["DE"] * n),
            }
            raw.write(pa.table({name: columns[name].cast(type_) for name, type_ in zip(raw_schema.names, raw_schema.types, strict=True)}))
            scored = pa.array(np.arange(n) % 200 != 7)
            score = rng.random(n, dtype=np.float32)
            predictions.write(
                pa.table(
                    {
                        "transaction_id": ids,
                        "score": pa.array(score),
                        "label": pa.array((score >= 0.5).astype(np.int8)),
                        "model_name": pa.array(["fraud-detector"] * n),
                        "model_version": pa.array(["7"] * n),
                    },
                    schema=predictions_schema,
                ).filter(scored)
            )


def publish(storage: Path, database: Path, chunk_rows: int, spill_dir: Path) -> dict:
    """Publish the day as the stage does, in this process; its peak memory and seconds."""
    store = PartitionedParquetStore(storage)
    # What publishable_rows reads of the pipeline's run (no Dagster run here: no recorded metadata).
    run = SimpleNamespace(
        domain=CARD, store=store, day_chunk_rows=chunk_rows, spill_dir=str(spill_dir), recorded_metadata=lambda asset, state: {}
    )
    db = PredictionDatabaseResource(url=f"sqlite:///{database}")
    db.ensure_schema(domain=CARD)
    db.release_connections()
    before = _current_mib()
    started = time.perf_counter()
    chunks = publishable_rows(run, DayState(day=DAY))
    written = db.replace_partition(DAY, chunks, domain=CARD)
    seconds = time.perf_counter() - started
    db.release_connections()
    return {
        "chunk_rows": chunk_rows,
        "rows": written,
        "published": db.count_partition(DAY),
        "seconds": round(seconds, 1),
        "rss_before_mib": round(before),
        "peak_rss_mib": round(_peak_mib()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--chunk-rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--step", choices=["write", "publish"], help=argparse.SUPPRESS)
    parser.add_argument("--storage", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "write":
        write_day(args.storage, args.rows)
        return
    if args.step == "publish":
        print(json.dumps(publish(args.storage, args.database, args.chunk_rows, args.database.parent)))
        return
    with tempfile.TemporaryDirectory(prefix="publish-memory-", dir=args.workdir) as folder:
        work = Path(folder)
        me = [sys.executable, __file__, "--rows", str(args.rows)]
        subprocess.run([*me, "--step", "write", "--storage", str(work / "storage")], check=True)
        results = []
        for label, chunk_rows in (("one table", args.rows + 1), (f"chunks of {args.chunk_rows:,}", args.chunk_rows)):
            (work / label).mkdir()
            out = subprocess.run(
                [*me, "--chunk-rows", str(chunk_rows), "--step", "publish", "--storage", str(work / "storage"), "--database", str(work / label / "p.db")],
                check=True, capture_output=True, text=True,
            ).stdout
            results.append({"path": label, **json.loads(out.splitlines()[-1])})
            print(json.dumps(results[-1]), flush=True)
        print("\n| path | rows | seconds | RSS before (MiB) | peak RSS (MiB) |\n| --- | ---: | ---: | ---: | ---: |")
        for r in results:
            print(f"| {r['path']} | {r['published']:,} | {r['seconds']} | {r['rss_before_mib']} | {r['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
