"""Three ways to score the same snapshot with the same model: the predictions path, a hand-written loop, mlflow.pyfunc.

    python benchmarks/scoring.py --rows 1000000 5000000

Each variant runs in a fresh subprocess (one after the other, same snapshot and model) so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAY = "2025-01-01"
VARIANTS = {
    "a": "predictions path (score_day: streamed read, scorer, streamed atomic write)",
    "b": "hand-written loop (pyarrow batches, torch forward, pyarrow writer)",
    "c": "mlflow.pyfunc predict on pandas (whole day in memory)",
}
READ_ROWS = 65_536


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    # Linux: writing 5 resets VmHWM to the current RSS, so the peak measured after it is the workload's own.
    Path("/proc/self/clear_refs").write_text("5")


def make_snapshot(storage: Path, rows: int, seed: int = 0) -> None:
    """A synthetic input_snapshot day of `rows` rows: transaction_id plus the feature columns, float32."""
    import numpy as np
    import pyarrow as pa

    from batchinfer_assets.domains.card_transactions.features import FEATURE_COLUMNS
    from batchinfer_assets.lib.parquet_store import PartitionedParquetStore

    rng = np.random.default_rng(seed)
    ids = pa.array([f"t{i:010d}" for i in range(rows)], pa.large_string())
    arrays = [ids] + [pa.array(rng.normal(size=rows).astype(np.float32)) for _ in FEATURE_COLUMNS]
    table = pa.Table.from_arrays(arrays, names=["transaction_id", *FEATURE_COLUMNS])
    PartitionedParquetStore(storage).write_partition("input_snapshot", DAY, table)


def child(variant: str, storage: str, tracking_uri: str, out: str) -> dict:
    """Run one variant; return its timings and peak memory."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from batchinfer_assets.assets.predictions import predictions_schema, score_day
    from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
    from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
    from batchinfer_assets.resources.torch_scorer import TorchScorerResource

    resolved = MlflowModelRegistryResource(tracking_uri=tracking_uri).resolve()
    store = PartitionedParquetStore(storage)
    files = store.partition_files("input_snapshot", DAY)
    columns = list(resolved.input_columns)
    scorer = TorchScorerResource(device="cpu", batch_size=READ_ROWS)
    if variant in ("a", "b"):
        loaded = scorer.load(resolved)
    else:
        import mlflow.pyfunc

        from batchinfer_assets.lib.model_loading import mlflow_uris

        with mlflow_uris(tracking_uri):
            pyfunc = mlflow.pyfunc.load_model(resolved.pinned_uri)
    _reset_peak_rss()
    baseline = _status_mib("VmRSS")
    started = time.perf_counter()
    if variant == "a":
        rows = score_day(store, DAY, scorer, loaded, id_column="transaction_id").rows
    elif variant == "b":
        module, schema = loaded.module, predictions_schema("transaction_id")
        rows = 0
        with open(Path(out) / "b.parquet", "wb") as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            for path in files:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=["transaction_id", *columns]):
                    matrix = np.column_stack([batch.column(c).to_numpy() for c in columns])
                    with torch.inference_mode():
                        scores = module(torch.from_numpy(matrix)).reshape(-1).numpy()
                    n = batch.num_rows
                    writer.write_batch(
                        pa.record_batch(
                            [
                                batch.column("transaction_id"),
                                pa.array(scores),
                                pa.array((scores >= 0.5).astype(np.int8)),
                                pa.array(np.full(n, resolved.name, dtype=object), pa.large_string()),
                                pa.array(np.full(n, resolved.version, dtype=object), pa.large_string()),
                            ],
                            schema=schema,
                        )
                    )
                    rows += n
    else:
        frame = pq.read_table(files).to_pandas()
        scores = np.asarray(pyfunc.predict(frame[columns])).reshape(-1).astype(np.float32)
        out_frame = frame[["transaction_id"]].assign(
            score=scores, label=(scores >= 0.5).astype(np.int8), model_name=resolved.name, model_version=resolved.version
        )
        out_frame.to_parquet(Path(out) / "c.parquet", index=False, compression="zstd")
        rows = len(out_frame)
    seconds = time.perf_counter() - started
    return {
        "variant": variant,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds),
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": round(_status_mib("VmHWM"), 1),
        "process_peak_rss_mib": round(_peak_rss_mib(), 1),
        "torch_threads": torch.get_num_threads(),
    }


def run(rows_list: list[int], variants: list[str], repeats: int, workdir: Path) -> list[dict]:
    from batchinfer_assets.lib.demo_model import register_demo_model

    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    register_demo_model(tracking_uri=tracking_uri, artifact_location=str(workdir / "mlartifacts"))
    results = []
    for rows in rows_list:
        storage = workdir / f"storage_{rows}"
        make_snapshot(storage, rows)
        for repeat in range(repeats):
            for variant in variants:
                with tempfile.TemporaryDirectory(dir=workdir) as out:
                    completed = subprocess.run(
                        [sys.executable, __file__, "--child", variant, str(storage), tracking_uri, out],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                if completed.returncode != 0:
                    raise RuntimeError(f"variant {variant} at {rows} rows failed:\n{completed.stderr[-4000:]}")
                result = json.loads(completed.stdout.strip().splitlines()[-1])
                result["repeat"] = repeat
                results.append(result)
                print(json.dumps(result), flush=True)
    return results


def summary(results: list[dict]) -> str:
    """A markdown table: best wall time per (rows, variant), ratios against (b) and (c), peak memory."""
    best: dict[tuple[int, str], dict] = {}
    for r in results:
        key = (r["rows"], r["variant"])
        if key not in best or r["seconds"] < best[key]["seconds"]:
            best[key] = r
    lines = [
        "| rows | variant | wall s | rows/s | time vs (a) | peak RSS while scoring MiB | of which above the loaded-model baseline MiB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (rows, variant), r in sorted(best.items()):
        a = best.get((rows, "a"))
        ratio = f"{r['seconds'] / a['seconds']:.2f}x" if a else ""
        lines.append(
            f"| {rows:,} | ({variant}) {VARIANTS[variant]} | {r['seconds']:.2f} | {r['rows_per_second']:,} | {ratio} | "
            f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] - r['baseline_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given; a temporary folder otherwise")
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "STORAGE", "TRACKING_URI", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(args.rows, args.variants, args.repeats, args.workdir.absolute())
    else:
        with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
            results = run(args.rows, args.variants, args.repeats, Path(tmp))
    print(summary(results))


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    main()
