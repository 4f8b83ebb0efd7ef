"""Peak memory of a one-day run against a single-run range of days, through the real CLI, same rows a day.

    python benchmarks/range_memory.py --rows 1000000 --days 4 [--start 2025-03-03]

The demo model is registered once (outside the timings); then, each in fresh storage and a fresh DAGSTER_HOME:
`dg launch --job daily_scoring_job --partition START` and `dg launch --job daily_scoring_job --partition-range
START...END` (END = START + days - 1). For each: the peak RSS of the largest process (`/usr/bin/time -v`) and of
the whole process tree summed (polled from /proc), wall clock, the step's duration and each day's stage times
from the run's event log. Goal: the range's largest process at most 1.25x the one day's, whatever the length.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path

from whole_day import DAY, STAGES, bench_env, fresh_dagster_home, read_run, register_model, run_cli

GOAL = 1.25


def measure(workdir: Path, rows: int, start: str, days: int, tracking_uri: str) -> dict:
    home = workdir / "home"
    dagster_home = fresh_dagster_home(workdir / "dagster_home")
    env = bench_env(home, dagster_home, rows, tracking_uri)
    end = (dt.date.fromisoformat(start) + dt.timedelta(days=days - 1)).isoformat()
    partition = ["--partition", start] if days == 1 else ["--partition-range", f"{start}...{end}"]
    cli = run_cli(partition, env, workdir / "cli.log")
    run = read_run(dagster_home)
    if cli["rc"] != 0 or run["status"] != "SUCCESS":
        tail = (workdir / "cli.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{cli['command']} failed (rc {cli['rc']}, {run['status']}): {run.get('errors')}\n{tail}")
    result = {"days": days, "rows": rows, "cli": cli, "run": run}
    print(json.dumps({"days": days, "wall_s": cli["wall_s"], "step_s": run.get("step_s"), "largest_mib": cli["largest_process_peak_mib"], "tree_mib": cli["tree_sum_peak_mib"]}), flush=True)
    return result


def report(one: dict, many: dict) -> str:
    lines = [
        f"### {one['rows']:,} rows a day: one day against {many['days']} days in one run",
        "",
        "| run | wall s | step s | largest process peak RSS MiB | whole tree peak RSS (summed) MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in (one, many):
        lines.append(
            f"| `{r['cli']['command']}` | {r['cli']['wall_s']:.1f} | {r['run'].get('step_s', float('nan')):.1f} | "
            f"{r['cli']['largest_process_peak_mib']:,.0f} | {r['cli']['tree_sum_peak_mib']:,.0f} |"
        )
    ratio = many["cli"]["largest_process_peak_mib"] / one["cli"]["largest_process_peak_mib"]
    tree_ratio = many["cli"]["tree_sum_peak_mib"] / one["cli"]["tree_sum_peak_mib"]
    lines += [
        "",
        f"- largest process, {many['days']} days / 1 day: {ratio:.2f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'MISSED'})",
        f"- whole tree summed, {many['days']} days / 1 day: {tree_ratio:.2f}",
        "",
        "Stage times per day of the range run (s):",
        "",
        "| day | " + " | ".join(STAGES) + " |",
        "| --- |" + " ---: |" * len(STAGES),
    ]
    for day, stages in sorted(many["run"]["stages"].items()):
        lines.append(f"| {day} | " + " | ".join(f"{stages.get(s, float('nan')):.2f}" for s in STAGES) + " |")
    for day, stages in sorted(one["run"]["stages"].items()):
        lines.append(f"| {day} (the one-day run) | " + " | ".join(f"{stages.get(s, float('nan')):.2f}" for s in STAGES) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--start", default=DAY)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given; a temporary folder otherwise")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args()
    workdir = args.workdir.absolute() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-range-memory-"))
    try:
        tracking_uri, seconds = register_model(workdir / "model")
        print(f"demo model registered in {seconds:.1f} s (not timed below)", flush=True)
        one = measure(workdir / "days1", args.rows, args.start, 1, tracking_uri)
        many = measure(workdir / f"days{args.days}", args.rows, args.start, args.days, tracking_uri)
        print(report(one, many), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"one": one, "many": many}, indent=1, default=str))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
