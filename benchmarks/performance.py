"""Time `prediction_performance` over a window of big days, through the real pipeline step, and its peak memory.

    python benchmarks/performance.py [--rows 1000000] [--days 30] [--start 2025-03-01] [--workdir DIR]
                                     [--day-chunk-rows N [N ...]]

Phase 1 (not timed) writes, for each day, `predictions` through the project's Parquet store (`--rows` rows,
scores drawn so the model is calibrated, about 2.6% positives) and two real label files in a labels zone: the first with
60% of the ids, the second a week later with 20% more plus 2% of the first file's ids relabelled (duplicates,
5% of them contradicting) and 1,000 ids that were never scored. An MLflow run logs the hold-out metric the
check compares against.

Phase 2 runs in a fresh process: one `dg.materialize` of `prediction_performance` alone over the whole window as
one single-run range (what the sensor's backfill does), with `ParquetLabelsResource` on the zone. It prints the
step's wall time, each day's evaluation time (between consecutive materializations of the asset in the event
log) and the process's peak RSS (`VmHWM`: `ru_maxrss` would carry over the generating parent's peak, which Linux
keeps across the child's exec), as one JSON line. With `--day-chunk-rows`, phase 2 runs once per
value given, each in its own fresh process on the same data: a day of more rows than the value is streamed and
evaluated in score ranges, e.g. `--rows 5000000 --days 1 --day-chunk-rows 10000000 1000000` compares the whole day
in memory with the day in buckets of about a million rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def day_ids(day: str, rows: int) -> pa.Array:
    prefix = day.replace("-", "") + "-"
    return pa.array(np.char.add(prefix, np.char.zfill(np.arange(rows).astype(str), 7)).astype(object), pa.string())


def generate(workdir: Path, days: list[str], rows: int) -> str:
    """Predictions, label files and an MLflow run with a hold-out metric; returns the run id (the version)."""
    import mlflow

    from batchinfer_assets.lib.model_loading import ensure_experiment, make_client, mlflow_uris
    from batchinfer_assets.lib.parquet_store import PartitionedParquetStore

    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = make_client(tracking_uri)
    with mlflow_uris(tracking_uri), mlflow.start_run(experiment_id=ensure_experiment(client, "bench", str(workdir / "art"))) as run:
        mlflow.log_metric("holdout_roc_auc", 0.76)
    version = run.info.run_id
    store = PartitionedParquetStore(workdir / "storage")
    for k, day in enumerate(days):
        rng = np.random.default_rng(k)
        scores = (1 / (1 + np.exp(-rng.normal(-5.0, 1.8, rows)))).astype(np.float32)
        truth = (rng.random(rows) < scores).astype(np.int8)
        ids = day_ids(day, rows)
        store.write_partition(
            "predictions",
            day,
            pa.table(
                {
                    "transaction_id": ids.cast(pa.large_string()),
                    "score": scores,
                    "label": (scores >= 0.5).astype(np.int8),
                    "model_name": pa.array([""] * rows, pa.large_string()),
                    "model_version": pa.array([version] * rows, pa.large_string()),
                }
            ),
        )
        folder = workdir / "labels" / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        first = rng.random(rows) < 0.6
        second = ~first & (rng.random(rows) < 0.5)
        relabel = first & (rng.random(rows) < 0.02)
        stamp = np.datetime64(day) + np.timedelta64(3, "D")
        _write_labels(folder / "part-1.parquet", ids.filter(pa.array(first)), truth[first], stamp)
        flipped = np.where(rng.random(int(relabel.sum())) < 0.05, 1 - truth[relabel], truth[relabel])
        unknown = pa.array([f"unscored-{day}-{i}" for i in range(1000)], pa.string())
        _write_labels(
            folder / "part-2.parquet",
            pa.concat_arrays([ids.filter(pa.array(second)), ids.filter(pa.array(relabel)), unknown]),
            np.concatenate([truth[second], flipped, np.zeros(1000, np.int8)]),
            stamp + np.timedelta64(7, "D"),
        )
        print(f"generated {day}", file=sys.stderr, flush=True)
    return version


def _write_labels(path: Path, ids: pa.Array, fraud: np.ndarray, stamp: np.datetime64) -> None:
    at = np.full(len(ids), stamp.astype("datetime64[us]"))
    pq.write_table(pa.table({"transaction_id": ids, "is_fraud": fraud, "labelled_at": pa.array(at, pa.timestamp("us", tz="UTC"))}), path)


def _peak_rss_kib() -> int:
    """This process's own peak RSS since its exec (VmHWM)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def evaluate(workdir: Path, days: list[str], version: str, day_chunk_rows: int | None) -> dict:
    """One single-run range of prediction_performance over the window, timed, with the process's peak RSS."""
    import dagster as dg

    from batchinfer_assets.resources.labels_zone import ParquetLabelsResource
    from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
    from batchinfer_assets.resources.table_storage import TableStorageResource
    from batchinfer_assets_tests.support import materialize_pipeline, pipeline_resources

    registry = MlflowModelRegistryResource(
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", model_uri=f"runs:/{version}/model", demo_when_missing=False
    )
    storage = TableStorageResource(base_uri=str(workdir / "storage"), **({"day_chunk_rows": day_chunk_rows} if day_chunk_rows else {}))
    resources = pipeline_resources(
        workdir / "storage", registry, labels=ParquetLabelsResource(uri=str(workdir / "labels")), table_storage=storage
    )
    home = Path(tempfile.mkdtemp(prefix="dagster_home", dir=workdir))
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        started = time.perf_counter()
        result = materialize_pipeline(resources, ["prediction_performance"], days=(days[0], days[-1]), instance=instance)
        wall = time.perf_counter() - started
        events = instance.fetch_materializations(dg.AssetKey("prediction_performance"), limit=len(days) + 1, ascending=True).records
        step_start = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)[0].timestamp
    # Days run one after the other: each day's evaluation ends with its materialization.
    per_day = np.diff([step_start, *(r.timestamp for r in events)])
    meta = result.get_asset_materialization_events()[-1].materialization.metadata
    return {
        "day_chunk_rows": storage.day_chunk_rows,
        "days": len(days),
        "step_wall_s": round(wall, 2),
        "per_day_s": {"min": round(float(per_day.min()), 3), "median": round(float(np.median(per_day)), 3), "max": round(float(per_day.max()), 3)},
        "sum_days_s": round(float(per_day.sum()), 2),
        "peak_rss_mib": round(_peak_rss_kib() / 1024, 1),
        "last_day": {
            "n_predictions": meta["label_counts"].value["predictions"],
            "n_labelled": meta["label_counts"].value["labelled"],
            "roc_auc": meta["roc_auc"].value,
            "estimated_roc_auc": next(
                row["roc_auc"]
                for row in pq.read_table(workdir / "storage" / "prediction_performance" / f"dt={days[-1]}").to_pylist()
                if row["kind"] == "estimated"
            ),
            **{f"labels_{k}": meta["label_counts"].value[k] for k in ("unknown_ids", "duplicates", "contradictory")},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--start", default="2025-03-01")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--day-chunk-rows", type=int, nargs="+", default=[0], help="evaluate once per value [the default setting]")
    parser.add_argument("--phase", choices=["all", "evaluate"], default="all")
    parser.add_argument("--version", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    first = dt.date.fromisoformat(args.start)
    days = [(first + dt.timedelta(days=k)).isoformat() for k in range(args.days)]
    if args.phase == "evaluate":
        print(json.dumps(evaluate(args.workdir, days, args.version, args.day_chunk_rows[0] or None)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-performance-"))
    try:
        started = time.perf_counter()
        version = generate(workdir, days, args.rows)
        generated = time.perf_counter() - started
        # The evaluation imports the test helpers that build the pipeline's resources: the repo root goes on the path.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        runs = []
        for chunk in args.day_chunk_rows:
            command = [sys.executable, __file__, "--phase", "evaluate", "--workdir", str(workdir), "--rows", str(args.rows),
                       "--days", str(args.days), "--start", args.start, "--version", version, "--day-chunk-rows", str(chunk)]
            out = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"evaluation failed (rc {out.returncode}):\n{out.stderr[-4000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        figures = runs[0] if len(runs) == 1 else {"runs": runs}
        size = sum(p.stat().st_size for p in (workdir / "labels").rglob("*.parquet"))
        print(json.dumps({
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "command": " ".join(
                ["python benchmarks/performance.py", f"--rows {args.rows}", f"--days {args.days}"]
                + (["--day-chunk-rows", *map(str, args.day_chunk_rows)] if any(args.day_chunk_rows) else [])
            ),
            "generate_s": round(generated, 1),
            "labels_mib": round(size / 2**20, 1),
            **figures,
        }, indent=1))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
