"""What a day's size costs: one day of N rows through the real CLI, for several N, on the local or the Ray engine.

    python benchmarks/day_size.py --rows 1000000 20000000 [--chunk-rows 1000000] [--day 2025-03-03] [--engine ray]

The demo model is registered once (outside the timings). For each N, in a fresh BATCHINFER_HOME and DAGSTER_HOME:
the synthetic card day is landed as Parquet files of 1,000,000 rows each (outside the timings; file k drawn with
seed k, its transaction ids prefixed with k so they stay unique), then `dg launch --job daily_scoring_job
--partition DAY` runs with `BATCHINFER_LANDING_URI` on those files and `BATCHINFER_DAY_CHUNK_ROWS` as given.
Per N: the wall clock, the step's seconds, rows per second of the step, the peak RSS of the largest process
(`/usr/bin/time -v`) and of the whole process tree (summed, polled from /proc), each stage's seconds, and the peak
of the largest process while each stage ran. Ratios are against the first N of the same invocation. The landing
and storage of each N are removed before the next (disk).
Goals (issue 25): largest process 20M / 1M <= 1.5; a 100M-row day completes with a peak <= 4 GiB and rows/s
within 20% of the 1M-row day's.

`--engine ray` starts the tests' two-node loopback cluster (1 CPU each, `batchinfer_assets_tests/ray/cluster.py`) for
the invocation and runs with `BATCHINFER_SCORING_ENGINE=ray` on it: the CLI's process tree is then the step and its
driver threads only (the Ray workers are the nodes' children), so its largest process is the step's; the nodes'
own peak (each node's process tree, summed) is reported beside it. Goal: the step's peak stays flat as the day grows.
A Ray driver maps the object store's shared memory to read results, so its RSS also counts object store pages it
has read (up to the head node's object store size, whatever the day): the largest process's own (RssAnon) and
shared (RssShmem) peaks are reported apart. `--check-local` then runs the same landing on the local engine (outside
the timings) and compares the day's files: byte for byte for the tables written row for row, and predictions row by
row (issue 25: "files equal to the local engine's", scores within 1e-6).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The repo root, for the tests' loopback Ray cluster (`--engine ray`): importable however the script is started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchinfer_assets.lib.spill import DEFAULT_DAY_CHUNK_ROWS  # noqa: E402
from batchinfer_assets_tests.ray.cluster import LOOPBACK_ENV, start_cluster, stop_cluster  # noqa: E402
from whole_day import DAY, ROOT, STAGES, TreeMonitor, bench_env, fresh_dagster_home, read_run, register_model, run_cli, stage_memory  # noqa: E402

FILE_ROWS = 1_000_000


def land(rows: int, day: str, landing: Path) -> float:
    """Land `rows` synthetic rows for `day` as files of FILE_ROWS rows, in a child process; seconds taken."""
    code = f"""
import datetime as dt, pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
from batchinfer_assets.domain import load_domain
domain = load_domain(None)
folder = Path({str(landing)!r}) / "dt={day}"
folder.mkdir(parents=True, exist_ok=True)
left, k = {rows}, 0
while left > 0:
    n = min(left, {FILE_ROWS})
    frame = domain.synthetic.generate_day(dt.date.fromisoformat({day!r}), n, k)
    frame[domain.id_column] = f"{{k:04d}}-" + frame[domain.id_column].astype(str)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"part-{{k:05d}}.parquet")
    left, k = left - n, k + 1
"""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - started


def measure(workdir: Path, rows: int, day: str, chunk_rows: int, tracking_uri: str, cluster=None, check_local: bool = False) -> dict:
    landing = workdir / "landing"
    land_s = land(rows, day, landing)
    home = workdir / "home"
    dagster_home = fresh_dagster_home(workdir / "dagster_home")
    env = bench_env(home, dagster_home, rows, tracking_uri, landing=landing)
    env["BATCHINFER_DAY_CHUNK_ROWS"] = str(chunk_rows)
    nodes = []
    if cluster is not None:
        env.update({**LOOPBACK_ENV, "BATCHINFER_SCORING_ENGINE": "ray", "RAY_ADDRESS": cluster.address})
        nodes = [TreeMonitor(node.pid, interval_s=0.2) for node in cluster.nodes]
        for monitor in nodes:
            monitor.start()
    cli = run_cli(["--partition", day], env, workdir / "cli.log")
    for monitor in nodes:
        monitor.stop()
    run = read_run(dagster_home)
    if cli["rc"] != 0 or run["status"] != "SUCCESS":
        tail = (workdir / "cli.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{cli['command']} failed (rc {cli['rc']}, {run['status']}): {run.get('errors')}\n{tail}")
    per_stage = {stage: (seconds, peak) for _, stage, seconds, peak in stage_memory(cli, run)}
    own = {stage: max((anon for t, _, _, anon in cli["samples"] if start <= t <= end + 0.05), default=0) / 1024 for _, stage, start, end in run["windows"]}
    result = {
        "rows": rows,
        "chunk_rows": chunk_rows,
        "land_s": land_s,
        "wall_s": cli["wall_s"],
        "step_s": run.get("step_s"),
        "rows_per_s": rows / run["step_s"] if run.get("step_s") else None,
        "largest_mib": cli["largest_process_peak_mib"],
        "tree_mib": cli["tree_sum_peak_mib"],
        "stages": per_stage,
        "stages_own_mib": own,
        "loadavg_1m_before": cli["loadavg_1m_before"],
        "loadavg_1m_after": cli["loadavg_1m_after"],
        "command": cli["command"],
        "engine": "ray" if cluster is not None else "local",
        "ray_nodes_mib": sum(m.peak_sum_kib for m in nodes) / 1024 if nodes else None,
    }
    largest = max(cli["processes"].values(), key=lambda e: e["peak_mib"])
    result["largest_anon_mib"], result["largest_shmem_mib"] = largest["anon_peak_mib"], largest["shmem_peak_mib"]
    if cluster is not None and check_local:
        result["local_check"] = check_against_local(workdir, rows, day, chunk_rows, tracking_uri, home / "storage")
    print(json.dumps({k: v for k, v in result.items() if k != "stages"}), flush=True)
    shutil.rmtree(landing, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    return result


# The tables a day's run writes row for row; their files must be byte-identical between engines.
EQUAL_FILES = ("raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot")


def check_against_local(workdir: Path, rows: int, day: str, chunk_rows: int, tracking_uri: str, ray_storage: Path) -> dict:
    """The same landing through the local engine (not timed), then every table of the day compared with the Ray run's:
    the files of EQUAL_FILES byte for byte (sha256), and predictions row by row (ids, order, labels equal; scores
    within 1e-6)."""
    import hashlib

    import numpy as np
    import pyarrow.parquet as pq

    home = workdir / "home-local"
    env = bench_env(home, fresh_dagster_home(workdir / "dagster_home_local"), rows, tracking_uri, landing=workdir / "landing")
    env["BATCHINFER_DAY_CHUNK_ROWS"] = str(chunk_rows)
    cli = run_cli(["--partition", day], env, workdir / "cli-local.log")
    if cli["rc"] != 0:
        raise RuntimeError(f"the local engine's run failed (rc {cli['rc']}): see {workdir / 'cli-local.log'}")

    def digests(storage: Path, table: str) -> dict[str, str]:
        folder = storage / table / f"dt={day}"
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}

    check: dict = {
        "local_step_s": read_run(workdir / "dagster_home_local").get("step_s"),
        "local_largest_mib": cli["largest_process_peak_mib"],
    }
    for table in EQUAL_FILES:
        ours, theirs = digests(ray_storage, table), digests(home / "storage", table)
        check[table] = "equal files" if ours == theirs and ours else f"DIFFERENT ({len(ours)} / {len(theirs)} files)"
    folder = f"predictions/dt={day}"
    ray_scored = pq.read_table(ray_storage / folder, columns=["transaction_id", "score", "label"])
    local_scored = pq.read_table(home / "storage" / folder, columns=["transaction_id", "score", "label"])
    same_rows = ray_scored.column("transaction_id").equals(local_scored.column("transaction_id"))
    diff = float(np.abs(ray_scored.column("score").to_numpy() - local_scored.column("score").to_numpy()).max()) if same_rows else None
    check["predictions"] = {
        "rows": ray_scored.num_rows,
        "same_ids_in_order": same_rows,
        "labels_equal": same_rows and ray_scored.column("label").equals(local_scored.column("label")),
        "max_score_diff": diff,
        "files_equal": digests(ray_storage, "predictions") == digests(home / "storage", "predictions"),
    }
    shutil.rmtree(home, ignore_errors=True)
    return check


def report(results: list[dict]) -> str:
    base = results[0]
    on_ray = base["engine"] == "ray"
    lines = [
        f"`BATCHINFER_DAY_CHUNK_ROWS={base['chunk_rows']:,}`, {base['engine']} engine, one day per run (`{base['command']}`):",
        "",
        "| rows | wall s | step s | rows/s (step) | vs first | largest process peak MiB | vs first | its own (anon) / shared peak MiB | "
        "tree peak MiB | " + ("Ray nodes' peak MiB | " if on_ray else "") + "load avg before/after |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if on_ray else "") + " --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['wall_s']:.1f} | {r['step_s']:.1f} | {r['rows_per_s']:,.0f} | "
            f"{r['rows_per_s'] / base['rows_per_s']:.2f} | {r['largest_mib']:,.0f} | {r['largest_mib'] / base['largest_mib']:.2f} | "
            f"{r['largest_anon_mib']:,.0f} / {r['largest_shmem_mib']:,.0f} | "
            f"{r['tree_mib']:,.0f} | " + (f"{r['ray_nodes_mib']:,.0f} | " if on_ray else "")
            + f"{r['loadavg_1m_before']:.1f} / {r['loadavg_1m_after']:.1f} |"
        )
    lines += ["", "Each stage's seconds and the largest process's peak while it ran (MiB; its own part after the slash on Ray):", ""]
    lines.append("| rows | " + " | ".join(STAGES) + " |")
    lines.append("| ---: |" + " ---: |" * len(STAGES))
    for r in results:
        cells = []
        for stage in STAGES:
            seconds, peak = r["stages"].get(stage, (float("nan"), float("nan")))
            cells.append(f"{seconds:.1f} s / {peak:,.0f}" + (f" / {r['stages_own_mib'].get(stage, float('nan')):,.0f}" if on_ray else ""))
        lines.append(f"| {r['rows']:,} | " + " | ".join(cells) + " |")
    for r in results:
        if "local_check" in r:
            lines += ["", f"Against the local engine, {r['rows']:,} rows: {json.dumps(r['local_check'])}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 20_000_000])
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_DAY_CHUNK_ROWS)
    parser.add_argument("--day", default=DAY)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given; a temporary folder otherwise")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: on a two-node loopback cluster started for the invocation")
    parser.add_argument(
        "--check-local", action="store_true", help="ray: also run each day on the local engine (not timed) and compare the files"
    )
    parser.add_argument("--object-store-mb", type=int, default=2048, help="each Ray node's object store (--engine ray)")
    args = parser.parse_args()
    workdir = args.workdir.absolute() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-day-size-"))
    cluster = None
    try:
        tracking_uri, seconds = register_model(workdir / "model")
        print(f"demo model registered in {seconds:.1f} s (not timed below)", flush=True)
        if args.engine == "ray":
            cluster = start_cluster(head_cpus=1, worker_cpus=1, object_store_mb=args.object_store_mb)
        results = [
            measure(workdir / f"rows{rows}", rows, args.day, args.chunk_rows, tracking_uri, cluster, args.check_local) for rows in args.rows
        ]
        print(report(results), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    finally:
        if cluster is not None:
            stop_cluster(cluster)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
