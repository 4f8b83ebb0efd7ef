"""The Ray engine against the local engine on the same day snapshot and model: rows/s, memory, per-actor throughput.

    python benchmarks/ray_scoring.py --rows 5000000 --actors 1 2
    python benchmarks/ray_scoring.py --rows 1000000 --actors 1 2 0 --node-cpus 1   # 0: the pool sized from the cluster

One loopback Ray cluster (a head and a worker node, as `batchinfer_assets_tests/ray` starts it) serves every Ray
variant. Each variant's driver runs in a fresh subprocess, so its peak RSS is its own; the Ray worker processes'
RSS is sampled every 0.2 s from /proc while a variant runs (per process, and summed over all of them). Every Ray
output is compared with the local engine's: same ids, labels and dtypes, scores within 1e-6.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAY = "2025-01-01"
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class _Log:
    """The `context.log` the engine writes to, printed to stderr."""

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = warning = info


class _Context:
    log = _Log()


def child(engine: str, actors: int, storage: str, tracking_uri: str, address: str) -> dict:
    """Score the day once with one engine; timings, driver peak RSS, and what the engine reported."""
    from batchinfer_assets.assets.predictions import predictions_schema, score_day
    from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
    from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
    from batchinfer_assets.resources.torch_scorer import TorchScorerResource

    resolved = MlflowModelRegistryResource(tracking_uri=tracking_uri).resolve()
    store = PartitionedParquetStore(storage)
    scorer = TorchScorerResource(device="cpu")
    if engine == "local":
        loaded = scorer.load(resolved)
    else:
        from batchinfer_assets.resources.ray_engine import RayScoringEngine, ray_cluster_for

        ray_engine = RayScoringEngine(cluster=ray_cluster_for(address), actors=actors or None, num_cpus_per_actor=0.5)
        ray_engine.prepare(_Context())
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_mib("VmRSS")
    first_rows: list[float] = []

    def on_rows(rows: int) -> None:
        if not first_rows:
            first_rows.append(time.perf_counter() - started)

    started = time.perf_counter()
    if engine == "local":
        result = score_day(store, DAY, scorer, loaded, on_rows=on_rows, id_column="transaction_id")
        per_actor = None
    else:
        result = ray_engine.score_day(_Context(), store, DAY, scorer, resolved, predictions_schema("transaction_id"), on_rows)
        per_actor = result.rows_per_second_per_actor
        actors = result.actors
    seconds = time.perf_counter() - started
    return {
        "engine": engine,
        "actors": actors,
        "rows": result.rows,
        "seconds": round(seconds, 2),
        # Until the first scored rows reached the step: actors started and the model loaded (Ray), or one batch (local).
        "first_rows_s": round(first_rows[0], 2) if first_rows else None,
        "rows_per_second": round(result.rows / seconds),
        "rows_per_second_per_actor": per_actor,
        "driver_baseline_rss_mib": round(baseline, 1),
        "driver_peak_rss_mib": round(_status_mib("VmHWM"), 1),
    }


class WorkerSampler:
    """Samples the RSS of every Ray worker process (`ray::...`) under the cluster's nodes while a variant runs."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peak_per_process: dict[int, tuple[str, float]] = {}
        self.peak_sum_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from batchinfer_assets_tests.ray.cluster import _descendants

        while not self._stop.is_set():
            total = 0.0
            for pid in {p for root in self.roots for p in _descendants(root)}:
                try:
                    name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    rss_mib = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB / 1024
                except (OSError, IndexError, ValueError):
                    continue
                if not name.startswith("ray::"):
                    continue
                total += rss_mib
                if rss_mib > self.peak_per_process.get(pid, ("", 0.0))[1]:
                    self.peak_per_process[pid] = (name, rss_mib)
            self.peak_sum_mib = max(self.peak_sum_mib, total)
            self._stop.wait(0.2)

    def report(self) -> dict:
        by_kind: dict[str, float] = {}
        for name, rss in self.peak_per_process.values():
            kind = name.split("(")[0] if "(" in name else name
            by_kind[kind] = max(by_kind.get(kind, 0.0), rss)
        return {"workers_peak_sum_mib": round(self.peak_sum_mib, 1), "worker_peak_by_kind_mib": {k: round(v, 1) for k, v in by_kind.items()}}


def compare(reference, candidate) -> dict:
    """How a Ray output differs from the local engine's (the same rows, dtypes and labels are required)."""
    import numpy as np

    assert candidate.schema.equals(reference.schema, check_metadata=True), "schemas differ"
    assert candidate.num_rows == reference.num_rows, f"{candidate.num_rows:,} rows, the local engine wrote {reference.num_rows:,}"
    for column in ("transaction_id", "label", "model_name", "model_version"):
        if not candidate.column(column).equals(reference.column(column)):
            first = int(np.flatnonzero(candidate.column(column).to_numpy() != reference.column(column).to_numpy())[0])
            raise AssertionError(f"{column} differs, first at row {first:,}")
    a, b = reference.column("score").to_numpy(), candidate.column("score").to_numpy()
    diff = float(np.abs(a - b).max()) if len(a) else 0.0
    assert diff <= 1e-6, f"scores differ by up to {diff}"
    return {"max_abs_score_diff": diff, "scores_not_bit_identical": int(np.count_nonzero(a != b))}


def run(rows: int, actor_counts: list[int], workdir: Path, node_cpus: int = 2) -> list[dict]:
    from batchinfer_assets.lib.demo_model import register_demo_model
    from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
    from batchinfer_assets_tests.ray.cluster import LOOPBACK_ENV, start_cluster, stop_cluster

    spec = importlib.util.spec_from_file_location("scoring_benchmark", REPO / "benchmarks" / "scoring.py")
    scoring_benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scoring_benchmark)

    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    register_demo_model(tracking_uri=tracking_uri, artifact_location=str(workdir / "mlartifacts"))
    storage = workdir / "storage"
    scoring_benchmark.make_snapshot(storage, rows)
    env = {**os.environ, **LOOPBACK_ENV, "PYTHONPATH": str(REPO)}
    results = []

    def variant(engine: str, actors: int, address: str) -> dict:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", engine, str(actors), str(storage), tracking_uri, address],
            capture_output=True, text=True, env=env, check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{engine} with {actors} actor(s) failed:\n{completed.stderr[-4000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])

    local = variant("local", 1, "")
    reference = PartitionedParquetStore(storage).read_partition("predictions", DAY)
    results.append(local)
    print(json.dumps(local), flush=True)
    # Two nodes on this machine's 2 cores: the second node stands in for a second machine's scheduling, not its
    # cores; per-actor throughput is what a real second machine adds per actor.
    cluster = start_cluster(head_cpus=node_cpus, worker_cpus=node_cpus, object_store_mb=1024)
    try:
        for actors in actor_counts:
            with WorkerSampler([node.pid for node in cluster.nodes]) as sampler:
                result = variant("ray", actors, cluster.address)
            result |= sampler.report()
            result |= compare(reference, PartitionedParquetStore(storage).read_partition("predictions", DAY))
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        stop_cluster(cluster)
    return results


def summary(results: list[dict]) -> str:
    lines = [
        "| engine | actors | wall s | first rows after s | rows/s | rows/s per actor | driver peak RSS MiB | Ray workers' peak RSS, summed MiB | largest worker MiB | scores not bit-identical / max diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        kinds = r.get("worker_peak_by_kind_mib", {})
        lines.append(
            f"| {r['engine']} | {r['actors']} | {r['seconds']:.2f} | {r['first_rows_s']:.2f} | {r['rows_per_second']:,} | "
            f"{(r['rows_per_second_per_actor'] or r['rows_per_second']):,.0f} | {r['driver_peak_rss_mib']:.0f} | "
            f"{r.get('workers_peak_sum_mib', 0):.0f} | {max(kinds.values(), default=0):.0f} | "
            + (f"{r['scores_not_bit_identical']:,} / {r['max_abs_score_diff']:.1e}" if "max_abs_score_diff" in r else "reference")
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="pool sizes to run; 0: unset, sized from the cluster")
    parser.add_argument("--node-cpus", type=int, default=2, help="logical CPUs of each of the two nodes")
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given; a temporary folder otherwise")
    parser.add_argument("--child", nargs=5, metavar=("ENGINE", "ACTORS", "STORAGE", "TRACKING_URI", "ADDRESS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, actors, storage, tracking_uri, address = args.child
        print(json.dumps(child(engine, int(actors), storage, tracking_uri, address)))
        return
    sys.path.insert(0, str(REPO))
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(args.rows, args.actors, args.workdir.absolute(), args.node_cpus)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-ray-scoring-") as tmp:
            results = run(args.rows, args.actors, Path(tmp), args.node_cpus)
    print(summary(results))
    for r in results:
        if "worker_peak_by_kind_mib" in r:
            print(f"{r['actors']} actor(s): peak RSS by Ray worker kind {r['worker_peak_by_kind_mib']}")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    main()
