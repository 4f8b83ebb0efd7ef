"""Reliability under load and faults, measured with real processes (no mocks).

    python benchmarks/faults.py kill --kills 20                  # (3) SIGKILL at a random moment of each stage
    python benchmarks/faults.py kill --kills 0 --at-write 10     # (3b) SIGKILL as each stage begins writing
    python benchmarks/faults.py concurrent --days 10 --rows 20000  # (1) 10 concurrent one-day runs on PostgreSQL
    python benchmarks/faults.py backfill --days 30 --rows 20000  # (2) 30-day backfill, S3 killed, PostgreSQL restarted

Each scenario prints a summary table and writes JSON (`--out`, default `benchmarks/results/faults-<scenario>.json`).
Every server, daemon and process group a scenario starts is torn down when it ends, also on failure.

(3) `kill`: one day on local storage and a SQLite prediction database. The stage's upstream is materialized
    first (with the version the killed run will write, so its output differs from what is visible), then a
    forked child (`os.setsid`, so the whole group is killed) materializes only that stage's asset and is
    SIGKILLed at a uniformly random moment between its step's start and end (the window is measured per
    stage by an uninterrupted calibration run). After each kill: every visible table of the day is one of
    the two known complete versions (content hash), every visible Parquet file is readable, the day's rows
    in the database are one of the two known complete sets; then a normal rerun of the stage succeeds,
    writes the new version, and leaves no `_staging` folder of the day behind. The two versions are the
    synthetic day at `--rows` and at `--rows` + 10%. `--at-write N` adds N kills per stage at the moment the
    killed run's staging folder appears (publish: SQLite's write-ahead log changes), plus 0-20 ms, because
    a random moment almost never lands inside a write of a few milliseconds. Children are forked from a parent that imported
    everything once, which keeps 120 kills within minutes; each child builds its definitions and instance
    itself.
(1) `concurrent`: dagster-webserver + dagster-daemon on a PostgreSQL instance (the shipped
    dagster.postgres.yaml with max_concurrent_runs and the pool limit raised to the number of days), the
    prediction database on the same PostgreSQL server; one run per day launched with GraphQL `launchRun`
    of `daily_scoring_job` tagged with its partition, all queued at once.
(2) `backfill`: the same processes, tables and landing files on a moto S3 server (its requests recorded to
    its data directory and replayed into the new process on restart, since moto keeps objects in memory);
    one single-run backfill of `--days` days through GraphQL `launchPartitionBackfill`; the S3 server is
    SIGKILLed once the backfill has published a third of the days and restarted on the same port after
    `--s3-down-s` seconds; PostgreSQL is restarted (`pg_ctl restart -m fast`) while a later day is being
    published.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
FIRST_DAY = dt.date(2025, 3, 1)

# Each stage: the asset whose selection runs it, the upstream selected to prepare it, the tables it writes.
KILL_STAGES: dict[str, tuple[str, list[str]]] = {
    "ingest": ("raw_transactions", []),
    "features": ("transaction_features", ["raw_transactions"]),
    "snapshot": ("input_snapshot", ["raw_transactions", "transaction_features", "quarantined_transactions"]),
    "predictions": ("predictions", ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot"]),
    "drift": ("drift_metrics", ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot", "predictions"]),
    "publish": (
        "published_predictions",
        ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot", "predictions", "drift_metrics"],
    ),
}
ALL_ASSETS = [*KILL_STAGES["publish"][1], "published_predictions"]
PARQUET_TABLES = ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot", "predictions", "drift_metrics"]


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table on stdout."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


# ---------------------------------------------------------------------------------------------------------------
# (3) SIGKILL at a random moment of each stage
# ---------------------------------------------------------------------------------------------------------------


def table_state(storage: Path, table: str, day: str) -> tuple[str | None, list[str]]:
    """(content hash of the day's visible files, problems): None when the day is absent.

    The hash covers each visible Parquet file's rows as read back (so a rewrite with identical rows matches)
    and the file names; an unreadable visible file is a problem (a partial write became visible).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = storage / table / f"dt={day}"
    if not folder.is_dir():
        return None, []
    digest = hashlib.sha256()
    problems = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith((".", "_"))):
        digest.update(path.name.encode())
        try:
            data = pq.read_table(path)
        except Exception as error:  # noqa: BLE001 - any unreadable visible file is the violation being counted
            problems.append(f"{table}/{path.name} unreadable: {type(error).__name__}: {error}")
            continue
        for batch in data.to_batches():
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest(), problems


def db_state(db: Path, day: str) -> tuple[str | None, int, int]:
    """(hash of the day's published rows, rows, distinct transaction ids); hash None when none are published."""
    if not db.exists():
        return None, 0, 0
    with sqlite3.connect(db, timeout=60) as conn:
        try:
            rows = conn.execute(
                "select transaction_id, score, label, model_version from predictions where dt = ? order by transaction_id", (day,)
            ).fetchall()
            distinct = conn.execute("select count(distinct transaction_id) from predictions where dt = ?", (day,)).fetchone()[0]
        except sqlite3.OperationalError:
            return None, 0, 0
    if not rows:
        return None, 0, 0
    return hashlib.sha256(repr(rows).encode()).hexdigest(), len(rows), distinct


def staging_leftovers(storage: Path, day: str) -> list[str]:
    """The day's `_staging` folders in any table (a killed writer's; removed by the day's next writer)."""
    return sorted(str(p.relative_to(storage)) for p in storage.glob(f"*/_staging/dt={day}.*"))


def _child_materialize(env: dict[str, str], rows: int, assets: list[str], day: str, report: Path | None) -> None:
    """In a forked child: build the definitions for `rows` a day and materialize `assets` for `day`."""
    os.setsid()
    os.environ.update(env)
    os.environ["BATCHINFER_DEMO_ROWS_PER_DAY"] = str(rows)
    import dagster as dg

    from batchinfer_assets.assets.pipeline import daily_pipeline
    from batchinfer_assets.assets.predictions import scoring_model
    from batchinfer_assets.definitions import build_resources
    from batchinfer_assets.settings import Settings

    instance = dg.DagsterInstance.get()
    started = time.time()
    result = dg.materialize(
        [scoring_model, daily_pipeline],
        resources=build_resources(Settings.from_env()),
        selection=dg.AssetSelection.assets(*assets),
        partition_key=day,
        instance=instance,
        raise_on_error=False,
    )
    if report is not None:
        step = [
            e.timestamp
            for e in instance.all_logs(result.run_id)
            if e.dagster_event is not None and e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")
        ]
        report.write_text(json.dumps({"success": result.success, "step_start": step[0] - started, "step_end": step[-1] - started}))
    os._exit(0 if result.success else 3)


# Forked children not yet reaped: killed (whole group) when a scenario stops early.
_LIVE_CHILDREN: set[int] = set()


def fork_materialize(env: dict[str, str], rows: int, assets: list[str], day: str, report: Path | None = None) -> int:
    """Fork a child in its own session that materializes `assets`; returns its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        _LIVE_CHILDREN.add(pid)
    if pid == 0:
        try:
            log = os.open(env["BATCHINFER_HOME"] + "/child.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(log, 1)
            os.dup2(log, 2)
            _child_materialize(env, rows, assets, day, report)
        except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
            import traceback

            traceback.print_exc()
            os._exit(4)
    return pid


def wait_child(pid: int, timeout: float = 600) -> int:
    """The child's exit code (negative: the signal that ended it); SIGKILLs its group past `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _LIVE_CHILDREN.discard(pid)
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            kill_group(pid)
        time.sleep(0.05)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_ok(env: dict[str, str], rows: int, assets: list[str], day: str, report: Path | None = None) -> None:
    code = wait_child(fork_materialize(env, rows, assets, day, report))
    if code != 0:
        log = Path(env["BATCHINFER_HOME"]) / "child.log"
        raise RuntimeError(f"materializing {assets} for {day} at {rows} rows failed ({code}):\n{log.read_text()[-4000:]}")


def snapshot_versions(storage: Path, db: Path, day: str) -> dict[str, str | None]:
    state = {table: table_state(storage, table, day)[0] for table in PARQUET_TABLES}
    state["published_predictions"] = db_state(db, day)[0]
    return state


def scenario_kill(args: argparse.Namespace) -> dict[str, Any]:
    """SIGKILL each stage `--kills` times at a random moment of its step; count invariant violations."""
    # Import once in the parent so forked children start warm.
    import dagster  # noqa: F401
    import torch  # noqa: F401

    import batchinfer_assets.assets.pipeline  # noqa: F401
    import batchinfer_assets.definitions  # noqa: F401

    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="batchinfer-faults-kill-"))
    home = base / "home"
    (home / "dagster").mkdir(parents=True)
    env = {
        "BATCHINFER_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "BATCHINFER_DEVICE": "cpu",
        # A store that already holds the demo model saves training it (the test passes the session's).
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
    }
    for name in ("BATCHINFER_STORAGE_URI", "BATCHINFER_LANDING_URI", "BATCHINFER_PREDICTIONS_DB_URL"):
        os.environ.pop(name, None)
    storage = home / "storage"
    db = home / "predictions.db"
    day = FIRST_DAY.isoformat()
    versions = {"A": args.rows, "B": args.rows + max(args.rows // 10, 1)}
    stages = args.stages or list(KILL_STAGES)
    results: dict[str, Any] = {"rows": versions, "day": day, "home": str(home), "stages": {}}
    try:
        # The two complete versions of every table and of the published rows.
        known: dict[str, dict[str, str | None]] = {}
        for name in ("A", "B"):
            run_ok(env, versions[name], ALL_ASSETS, day)
            known[name] = snapshot_versions(storage, db, day)
            print(f"version {name} ({versions[name]} rows): " + ", ".join(f"{t}={(h or '-')[:8]}" for t, h in known[name].items()))
        # A rerun of the same version must reproduce the same hashes, or the comparison means nothing.
        run_ok(env, versions["B"], ALL_ASSETS, day)
        assert snapshot_versions(storage, db, day) == known["B"], "a rerun of the same version changed content hashes"
        current = "B"

        for stage in stages:
            asset, upstream = KILL_STAGES[stage]
            # Calibration: where the step starts and ends, uninterrupted.
            target = "A" if current == "B" else "B"
            if upstream:
                run_ok(env, versions[target], upstream, day)
            report = base / "calibration.json"
            run_ok(env, versions[target], [asset], day, report if args.kills else None)
            window = json.loads(report.read_text()) if args.kills else {"step_start": 0.0, "step_end": 0.0}
            current = target
            trials = []
            at_write = args.at_write
            for i in range(args.kills + at_write):
                target = "A" if current == "B" else "B"
                if upstream:
                    run_ok(env, versions[target], upstream, day)
                mode = "random" if i < args.kills else "at-write"
                delay = rng.uniform(window["step_start"], window["step_end"])
                wal = db.with_name(db.name + "-wal")
                # (size, mtime): a WAL left by an earlier writer is reused from its start without growing.
                wal_before = (wal.stat().st_size, wal.stat().st_mtime_ns) if wal.exists() else (0, 0)
                staged_before = set(staging_leftovers(storage, day))
                pid = fork_materialize(env, versions[target], [asset], day)
                forked = time.monotonic()
                code = None

                def writing() -> bool:
                    # Files: the stage's writer created its staging folder. The database: the day's transaction
                    # has begun writing to SQLite's write-ahead log (opening the database creates it empty).
                    if stage != "publish":
                        return bool(set(staging_leftovers(storage, day)) - staged_before)
                    try:
                        now = wal.stat()
                    except FileNotFoundError:
                        return False
                    return now.st_size > 0 and (now.st_size, now.st_mtime_ns) != wal_before

                if mode == "random":
                    time.sleep(delay)
                else:
                    # The moment the stage starts writing, plus up to 20 ms: inside the write.
                    while not writing() and time.monotonic() - forked < 120:
                        done, status = os.waitpid(pid, os.WNOHANG)
                        if done:
                            _LIVE_CHILDREN.discard(pid)
                            code = os.waitstatus_to_exitcode(status)
                            break
                        time.sleep(0.0005)
                    time.sleep(rng.uniform(0, 0.02))
                    delay = time.monotonic() - forked
                if code is None:
                    kill_group(pid)
                    code = wait_child(pid)
                killed = code == -signal.SIGKILL
                problems: list[str] = []
                for table in PARQUET_TABLES:
                    digest, unreadable = table_state(storage, table, day)
                    problems += unreadable
                    if digest not in (known["A"][table], known["B"][table]):
                        problems.append(f"{table}: visible content {str(digest)[:12]} is neither complete version")
                digest, count, distinct = db_state(db, day)
                if digest not in (known["A"]["published_predictions"], known["B"]["published_predictions"]):
                    problems.append(f"database: {count} rows ({distinct} distinct) for {day} match neither complete version")
                leftovers_after_kill = staging_leftovers(storage, day)
                # Which complete version the killed stage's own output shows: the one before (old) or its (new).
                own = "published_predictions" if stage == "publish" else asset
                shown = snapshot_versions(storage, db, day)[own]
                old_version = "A" if target == "B" else "B"
                visible = "new" if shown == known[target][own] else "old" if shown == known[old_version][own] else "neither"
                # A normal rerun succeeds, writes the new version and removes the killed run's staging.
                rerun_error = None
                try:
                    run_ok(env, versions[target], [asset], day)
                except RuntimeError as error:
                    rerun_error = str(error)[-500:]
                    problems.append(f"rerun failed: {rerun_error}")
                after = snapshot_versions(storage, db, day)
                written = {"published_predictions": ["published_predictions"]}.get(stage) or [
                    t for t in PARQUET_TABLES if t == asset or (stage == "features" and t == "quarantined_transactions")
                ]
                for table in written:
                    if after[table] != known[target][table]:
                        problems.append(f"after rerun {table} is not version {target}")
                left = staging_leftovers(storage, day)
                if left:
                    problems.append(f"staging left after rerun: {left}")
                current = target
                trials.append(
                    {
                        "mode": mode,
                        "delay_s": round(delay, 3),
                        "killed": killed,
                        "exit": code,
                        "staging_after_kill": len(leftovers_after_kill),
                        "visible_after_kill": visible,
                        "problems": problems,
                    }
                )
                print(f"{stage} #{i + 1} ({mode}): kill at {delay:.2f}s ({'killed' if killed else f'exited {code} first'}), {visible} version visible, "
                      f"staging after kill {len(leftovers_after_kill)}, problems: {problems or 'none'}", flush=True)
            results["stages"][stage] = {"window_s": window, "trials": trials}
    finally:
        for pid in list(_LIVE_CHILDREN):
            kill_group(pid)
            wait_child(pid, timeout=60)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    rows = []
    for stage, data in results["stages"].items():
        for mode in ("random", "at-write"):
            trials = [t for t in data["trials"] if t["mode"] == mode]
            if not trials:
                continue
            rows.append([
                stage,
                mode,
                f"{data['window_s']['step_start']:.1f}-{data['window_s']['step_end']:.1f}" if mode == "random" else "write begun",
                len(trials),
                sum(t["killed"] for t in trials),
                sum(t["staging_after_kill"] > 0 for t in trials),
                f"{sum(t['visible_after_kill'] == 'old' for t in trials)}/{sum(t['visible_after_kill'] == 'new' for t in trials)}",
                sum(bool(t["problems"]) for t in trials),
            ])
    print_table(
        f"SIGKILL during each stage ({versions['A']:,}/{versions['B']:,} rows, local storage, SQLite)",
        ["stage", "kill moment", "window (s)", "kills", "died by SIGKILL", "staging left by kill", "old/new visible", "invariant violations"],
        rows,
    )
    results["table"] = rows
    return results


# ---------------------------------------------------------------------------------------------------------------
# Shared by (1) and (2): PostgreSQL, webserver + daemon, GraphQL, verification
# ---------------------------------------------------------------------------------------------------------------

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUNS_BY_ID = """
query($ids: [String!]) {
  runsOrError(filter: {runIds: $ids}) {
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
  }
}"""
ALL_RUNS = """
{ runsOrError { ... on Runs { results { runId status creationTime startTime endTime tags { key value } } } } }
"""
RUN_EVENTS = """
query($id: ID!, $after: String) {
  logsForRun(runId: $id, afterCursor: $after) {
    ... on EventConnection { cursor hasMore events { __typename
      ... on MessageEvent { message timestamp }
      ... on ErrorEvent { error { message causes { message } } }
    } }
    ... on PythonError { message }
  }
}"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def graphql_retrying(system: Any, query: str, attempts: int = 20, **variables: Any) -> dict[str, Any]:
    """A GraphQL query retried for a while: right after a PostgreSQL restart the webserver answers 500 until its
    pooled connections are replaced."""
    import requests

    for attempt in range(attempts):
        try:
            return system.graphql(query, **variables)
        except (requests.RequestException, AssertionError):
            if attempt == attempts - 1:
                raise
            time.sleep(3)
    raise AssertionError("unreachable")


def instance_yaml(path: Path, concurrency: int) -> Path:
    """The shipped dagster.postgres.yaml with run and pool limits raised to `concurrency`."""
    import yaml

    config = yaml.safe_load((REPO / "dagster.postgres.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = concurrency
    config["concurrency"]["pools"]["default_limit"] = concurrency
    path.write_text(yaml.safe_dump(config))
    return path


def register_model(home: Path) -> str:
    """Train and register the demo model once, before any run, in a local MLflow store under `home`."""
    from batchinfer_assets.lib.demo_model import register_demo_model
    from batchinfer_assets.settings import Settings

    settings = Settings.from_env(environ={"BATCHINFER_HOME": str(home)})
    register_demo_model(tracking_uri=settings.tracking_uri, artifact_location=settings.artifact_location)
    return settings.tracking_uri


MATERIALIZATIONS = """
query($key: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $key}) { ... on Asset { assetMaterializations(partitions: $partitions) { partition runId } } }
}"""


def materialization_counts(system: Any, asset: str, days: list[str]) -> dict[str, int]:
    """How many times each day of `asset` was materialized (a day published twice shows 2)."""
    data = graphql_retrying(system, MATERIALIZATIONS, key=[asset], partitions=days)
    counts = dict.fromkeys(days, 0)
    for event in (data["assetOrError"] or {}).get("assetMaterializations") or []:
        counts[event["partition"]] = counts.get(event["partition"], 0) + 1
    return counts


def error_text(event: dict[str, Any]) -> str:
    """The innermost cause of an error event (a retry request's own message only says it was requested)."""
    error = event.get("error") or {}
    causes = [c["message"] for c in error.get("causes") or []]
    return (causes[-1] if causes else error.get("message") or event.get("message") or "").strip()


def run_events(system: Any, run_id: str) -> list[dict[str, Any]]:
    events, cursor = [], None
    while True:
        page = graphql_retrying(system, RUN_EVENTS, id=run_id, after=cursor)["logsForRun"]
        events += page["events"]
        cursor = page["cursor"]
        if not page["hasMore"]:
            return events


def db_counts(pg: Any, database: str) -> dict[str, dict[str, int]]:
    """Per day: rows, distinct transaction ids, scoring_runs rows."""
    with pg.connect(database) as conn:
        rows = conn.execute("select dt, count(*), count(distinct transaction_id) from predictions group by dt").fetchall()
        lineage = dict(conn.execute("select dt, count(*) from scoring_runs group by dt").fetchall())
    return {d: {"rows": n, "distinct": k, "scoring_runs": lineage.get(d, 0)} for d, n, k in rows}


def verify_days(days: list[str], counts: dict[str, dict[str, int]], snapshot_rows: dict[str, int], predictions_rows: dict[str, int]) -> list[list[Any]]:
    """One row per day: snapshot rows, predictions rows, database rows / distinct, scoring_runs, verdict."""
    table = []
    for day in days:
        db = counts.get(day, {"rows": 0, "distinct": 0, "scoring_runs": 0})
        ok = (
            snapshot_rows.get(day, -1) == predictions_rows.get(day, -2) == db["rows"] == db["distinct"]
            and db["scoring_runs"] == 1
        )
        table.append([day, snapshot_rows.get(day, "-"), predictions_rows.get(day, "-"), db["rows"], db["distinct"], db["scoring_runs"], "ok" if ok else "VIOLATION"])
    return table


def local_table_rows(storage: Path, table: str, day: str) -> int | None:
    """Rows of the day's visible files, with the check that every transaction id belongs to that day."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = storage / table / f"dt={day}"
    if not folder.is_dir():
        return None
    data = pq.read_table(folder, columns=["transaction_id"])
    ids = data.column("transaction_id")
    prefix = day.replace("-", "")
    if not pc.all(pc.starts_with(ids, prefix)).as_py() or pc.count_distinct(ids).as_py() != len(ids):
        return -len(ids)  # negative: rows of another day, or a duplicate id, in the folder
    return len(ids)


def stop_strays(base: Path) -> list[int]:
    """SIGKILL this scenario's processes that outlived their parents: code servers (`dagster api grpc`) the
    webserver or daemon started in a session of their own, found by the DAGSTER_HOME under `base` in their
    environment (seen after 3 of 7 harness runs here; their heartbeat did not end them). Returns their pids."""
    marker = f"DAGSTER_HOME={base / 'dagster_home'}".encode()
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return killed


@contextmanager
def postgres() -> Iterator[Any]:
    from batchinfer_assets_tests.postgres.server import start_server, stop_server

    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


def run_times(run: dict[str, Any]) -> dict[str, Any]:
    created, start, end = run.get("creationTime"), run.get("startTime"), run.get("endTime")
    return {
        "queued_s": round(start - created, 1) if start and created else None,
        "run_s": round(end - start, 1) if end and start else None,
    }


# ---------------------------------------------------------------------------------------------------------------
# (1) concurrent one-day runs on a PostgreSQL instance
# ---------------------------------------------------------------------------------------------------------------


def scenario_concurrent(args: argparse.Namespace) -> dict[str, Any]:
    """`--days` one-day runs of different days, queued at once, launched by the daemon, run concurrently."""
    from batchinfer_assets_tests.system.dagster_processes import running_dagster

    base = Path(tempfile.mkdtemp(prefix="batchinfer-faults-concurrent-"))
    days = [(FIRST_DAY + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    results: dict[str, Any] = {"days": days, "rows_per_day": args.rows, "base": str(base)}
    try:
        with postgres() as pg:
            dagster_db, predictions_db = pg.create_database("dagster"), pg.create_database("predictions")
            tracking_uri = register_model(base / "home")
            env = {
                **pg.dagster_env(dagster_db),
                "BATCHINFER_PREDICTIONS_DB_URL": pg.url(predictions_db),
                "BATCHINFER_DEMO_ROWS_PER_DAY": str(args.rows),
                "BATCHINFER_DEVICE": "cpu",
                # Ten runs on two cores: one torch thread each instead of ten oversubscribed pools.
                "OMP_NUM_THREADS": "1",
            }
            yaml_path = instance_yaml(base / "dagster.postgres.yaml", args.days)
            with running_dagster(base, tracking_uri, yaml_path, env) as system:
                launched_at = time.time()
                run_ids = {}
                for day in days:
                    answer = system.graphql(
                        LAUNCH_RUN,
                        params={
                            "selector": {"repositoryLocationName": "batchinfer_assets", "repositoryName": "__repository__", "jobName": "daily_scoring_job"},
                            "runConfigData": {},
                            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]},
                        },
                    )["launchRun"]
                    if answer["__typename"] != "LaunchRunSuccess":
                        raise RuntimeError(f"launchRun for {day}: {answer}")
                    run_ids[day] = answer["run"]["runId"]
                print(f"queued {len(run_ids)} runs in {time.time() - launched_at:.1f} s", flush=True)
                peak = 0

                def all_finished():
                    nonlocal peak
                    runs = system.graphql(RUNS_BY_ID, ids=list(run_ids.values()))["runsOrError"]["results"]
                    peak = max(peak, sum(r["status"] == "STARTED" for r in runs))
                    return runs if all(r["status"] in FINISHED for r in runs) else None

                runs = system.wait_for("every run to finish", all_finished, args.timeout, interval=1)
                wall = time.time() - launched_at
                by_id = {r["runId"]: r for r in runs}
                failures = {}
                for day, run_id in run_ids.items():
                    if by_id[run_id]["status"] != "SUCCESS":
                        failures[day] = [error_text(e) for e in run_events(system, run_id) if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")]
                # Let the publish sensor tick once more: it must find nothing left to publish.
                time.sleep(35)
                other_runs = [r for r in system.graphql(ALL_RUNS)["runsOrError"]["results"] if r["runId"] not in by_id]
            storage = base / "home" / "storage"
            snapshot_rows = {d: local_table_rows(storage, "input_snapshot", d) for d in days}
            predictions_rows = {d: local_table_rows(storage, "predictions", d) for d in days}
            counts = db_counts(pg, predictions_db)
    finally:
        strays = stop_strays(base)
        if strays:
            print(f"stopped {len(strays)} stray process(es) left by the Dagster processes: {strays}")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    per_run = []
    for day in days:
        run = by_id[run_ids[day]]
        per_run.append({"day": day, "run_id": run_ids[day], "status": run["status"], **run_times(run)})
    verdicts = verify_days(days, counts, snapshot_rows, predictions_rows)
    print_table(
        f"{args.days} concurrent one-day runs ({args.rows:,} rows a day), PostgreSQL instance and prediction database",
        ["day", "status", "queued (s)", "run (s)", "snapshot rows", "predictions rows", "db rows", "db distinct ids", "scoring_runs", "verdict"],
        [[p["day"], p["status"], p["queued_s"], p["run_s"], *v[1:]] for p, v in zip(per_run, verdicts)],
    )
    print(f"\nwall time from the first launch to the last run's end: {wall:.1f} s; at most {peak} runs STARTED at once; "
          f"other runs launched meanwhile (e.g. by the publish sensor): {len(other_runs)}")
    results.update(
        wall_s_runs=round(wall, 1), peak_started=peak, runs=per_run, failures=failures, verification=verdicts,
        other_runs=[{"status": r["status"], "tags": r["tags"]} for r in other_runs],
    )
    return results


# ---------------------------------------------------------------------------------------------------------------
# (2) a 30-day backfill on S3 and PostgreSQL, with the S3 server killed and PostgreSQL restarted
# ---------------------------------------------------------------------------------------------------------------

BUCKET = "batchinfer-faults"
BACKFILL_ASSETS = ALL_ASSETS
BACKFILL_RUNS = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
  }
}"""


# moto's server, as `moto_server` starts it, after replaying a recording in-process (werkzeug's test client).
_MOTO_WITH_REPLAY = """
import base64, json, sys
from pathlib import Path
from urllib.parse import urlsplit
from moto.moto_api import recorder
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple
from werkzeug.test import Client
recording, port = Path(sys.argv[1]), int(sys.argv[2])
app = DomainDispatcherApplication(create_backend_app)
replayed = 0
if recording.exists():
    recorder._user_enabled = False
    client = Client(app)
    with open(recording) as lines:
        for line in lines:
            entry = json.loads(line)
            body = base64.b64decode(entry["body"]) if entry.get("body_encoded") else (entry.get("body") or "")
            headers = {k: v for k, v in entry["headers"].items() if k.lower() != "transfer-encoding"}
            url = urlsplit(entry["url"])
            client.open(url.path, base_url=f"{url.scheme}://{url.netloc}", query_string=url.query, method=entry["method"], headers=headers, data=body)
            replayed += 1
    recorder._user_enabled = True
print(f"replayed {replayed} recorded requests", flush=True)
run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
"""


class RecordedMotoServer:
    """moto_server on a fixed port whose requests are recorded in its data directory, so that a new process
    started after a SIGKILL replays them and holds the same objects (moto itself keeps them in memory only)."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.recording = data_dir / "recording.jsonl"
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start the server, which first replays what earlier processes recorded; returns the seconds to answer.

        The replay happens inside the new process before it binds the port, so no client ever sees a server
        that answers with only part of its objects (a real S3 outage loses nothing).
        """
        import requests

        if self.recording.exists():
            # A process killed mid-write leaves a torn last line; the request it held never completed.
            data = self.recording.read_bytes()
            self.recording.write_bytes(data[: data.rfind(b"\n") + 1])
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "1", "MOTO_RECORDER_FILEPATH": str(self.recording), "MOTO_PORT": str(self.port)}
        started = time.monotonic()
        with open(self.data_dir / "moto_server.log", "a") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _MOTO_WITH_REPLAY, str(self.recording), str(self.port)],
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}: {(self.data_dir / 'moto_server.log').read_text()[-2000:]}")
            try:
                requests.get(f"{self.endpoint}/moto-api/", timeout=2)
                return time.monotonic() - started
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not answer within 600 s") from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the server's process group: no shutdown, in-flight requests cut."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        from batchinfer_assets_tests.processes import stop_process_group

        if self.proc is not None:
            stop_process_group(self.proc, timeout=15)


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def land_days(client: Any, days: list[str], rows: int) -> None:
    """The synthetic source's days as Parquet files in the S3 landing zone, one file per day."""
    import io

    from batchinfer_assets.domains.card_transactions.synthetic import generate_day

    for day in days:
        buffer = io.BytesIO()
        generate_day(dt.date.fromisoformat(day), rows).to_parquet(buffer, index=False)
        client.put_object(Bucket=BUCKET, Key=f"landing/dt={day}/part-0.parquet", Body=buffer.getvalue())


def s3_table_rows(client: Any, table: str, day: str) -> int | None:
    """Rows of the day's object on S3, with the check that every transaction id belongs to that day."""
    import io

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"warehouse/{table}/dt={day}/").get("Contents", [])
    keys = [o["Key"] for o in listed if o["Key"].endswith(".parquet")]
    if not keys:
        return None
    ids = pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()), columns=["transaction_id"]).column("transaction_id")
    if len(keys) != 1 or not pc.all(pc.starts_with(ids, day.replace("-", ""))).as_py() or pc.count_distinct(ids).as_py() != len(ids):
        return -len(ids)
    return len(ids)


def scenario_backfill(args: argparse.Namespace) -> dict[str, Any]:
    """One single-run backfill of `--days` days while the S3 server is killed and PostgreSQL is restarted."""
    from batchinfer_assets_tests.processes import free_port
    from batchinfer_assets_tests.system.dagster_processes import BACKFILL as BACKFILL_STATUS
    from batchinfer_assets_tests.system.dagster_processes import LAUNCH as LAUNCH_BACKFILL
    from batchinfer_assets_tests.system.dagster_processes import running_dagster

    base = Path(tempfile.mkdtemp(prefix="batchinfer-faults-backfill-"))
    days = [(FIRST_DAY + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    results: dict[str, Any] = {"days": [days[0], days[-1]], "rows_per_day": args.rows, "base": str(base), "faults": []}
    moto = RecordedMotoServer(base / "moto", free_port())
    timeline: list[tuple[float, str]] = []
    try:
        moto.start()
        client = s3_client(moto.endpoint)
        client.create_bucket(Bucket=BUCKET)
        land_days(client, days, args.rows)
        with postgres() as pg:
            dagster_db, predictions_db = pg.create_database("dagster"), pg.create_database("predictions")
            tracking_uri = register_model(base / "home")
            env = {
                **pg.dagster_env(dagster_db),
                "BATCHINFER_PREDICTIONS_DB_URL": pg.url(predictions_db),
                "BATCHINFER_STORAGE_URI": f"s3://{BUCKET}/warehouse",
                "BATCHINFER_LANDING_URI": f"s3://{BUCKET}/landing",
                "BATCHINFER_DEVICE": "cpu",
                "AWS_ENDPOINT_URL": moto.endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1",
            }
            with running_dagster(base, tracking_uri, REPO / "dagster.postgres.yaml", env) as system:
                started = time.time()

                def mark(what: str) -> None:
                    timeline.append((round(time.time() - started, 1), what))
                    print(f"[{time.time() - started:7.1f} s] {what}", flush=True)

                answer = system.graphql(
                    LAUNCH_BACKFILL,
                    params={"partitionNames": days, "assetSelection": [{"path": [a]} for a in BACKFILL_ASSETS], "fromFailure": False},
                )["launchPartitionBackfill"]
                if answer["__typename"] != "LaunchBackfillSuccess":
                    raise RuntimeError(f"launchPartitionBackfill: {answer}")
                backfill_id = answer["backfillId"]
                mark(f"backfill {backfill_id} of {len(days)} days launched")

                def published() -> int:
                    try:
                        with pg.connect(predictions_db) as conn:
                            return conn.execute("select count(distinct dt) from predictions").fetchone()[0]
                    except Exception:  # noqa: BLE001 - no table yet, or the server is restarting
                        return -1

                # Fault 1: SIGKILL the S3 server once a third of the days are published; restart it after a pause.
                system.wait_for("a third of the days to be published", lambda: published() >= args.days // 3, args.timeout, interval=0.5)
                moto.kill()
                mark(f"S3 server SIGKILLed ({published()} days published)")
                time.sleep(args.s3_down_s)
                replay_s = moto.start()
                mark(f"S3 server restarted on the same port ({replay_s:.1f} s to replay its recording)")
                results["faults"].append({"fault": "s3 sigkill", "down_s": args.s3_down_s, "replay_s": round(replay_s, 1)})

                # Fault 2: restart PostgreSQL while a day's rows are being copied into the prediction database.
                target = max(published(), 0) + max(args.days // 3, 1)
                system.wait_for(f"{target} days published", lambda: published() >= target, args.timeout, interval=0.5)
                caught = None
                deadline = time.monotonic() + 120
                with pg.connect("postgres") as conn:
                    while time.monotonic() < deadline and caught is None:
                        caught = conn.execute(
                            "select left(query, 60) from pg_stat_activity where datname = %s and state = 'active'"
                            " and (query ilike 'copy%%' or query ilike 'delete from predictions%%')",
                            (predictions_db,),
                        ).fetchone()
                        if caught is None:
                            time.sleep(0.02)
                restart_started = time.monotonic()
                from batchinfer_assets_tests.postgres.server import _run

                _run([str(pg.bin_dir / "pg_ctl"), "restart", "-D", str(pg.data_dir), "-l", str(pg.base / "server.log"), "-m", "fast", "-w", "-t", "60",
                      "-o", f"-p {pg.port} -k {pg.socket_dir} -c listen_addresses={pg.host} -c fsync=off"], "pg_ctl restart", 120)
                mark(f"PostgreSQL restarted in {time.monotonic() - restart_started:.1f} s, "
                     f"{'during: ' + caught[0] if caught else 'no publish statement caught in 120 s'}")
                results["faults"].append({"fault": "postgres restart -m fast", "during": caught[0] if caught else None})

                def backfill_done():
                    status = graphql_retrying(system, BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]["status"]
                    return status if status not in ("REQUESTED", "CANCELING", "FAILING") else None

                status = system.wait_for("the backfill to finish", backfill_done, args.timeout, interval=3)
                mark(f"backfill {status}")
                runs = graphql_retrying(system, BACKFILL_RUNS, id=backfill_id)["runsOrError"]["results"]
                run_reports = []
                for run in runs:
                    events = run_events(system, run["runId"])
                    run_reports.append({
                        "run_id": run["runId"], "status": run["status"], **run_times(run),
                        "step_retries": sum(e["__typename"] == "ExecutionStepUpForRetryEvent" for e in events),
                        "step_failures": [
                            error_text(e)[:600] for e in events
                            if e["__typename"] in ("ExecutionStepFailureEvent", "ExecutionStepUpForRetryEvent")
                        ],
                    })
                # Let the publish sensor tick: it must find every day already published by the backfill.
                time.sleep(35)
                materialized = {a: materialization_counts(system, a, days) for a in ("predictions", "published_predictions")}
                other_runs = [r for r in graphql_retrying(system, ALL_RUNS)["runsOrError"]["results"] if r["runId"] not in {x["runId"] for x in runs}]
            snapshot_rows = {d: s3_table_rows(client, "input_snapshot", d) for d in days}
            predictions_rows = {d: s3_table_rows(client, "predictions", d) for d in days}
            counts = db_counts(pg, predictions_db)
            wall = timeline[-1][0]
    finally:
        moto.stop()
        strays = stop_strays(base)
        if strays:
            print(f"stopped {len(strays)} stray process(es) left by the Dagster processes: {strays}")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    verdicts = verify_days(days, counts, snapshot_rows, predictions_rows)
    print_table(
        f"{len(days)}-day single-run backfill ({args.rows:,} rows a day), S3 killed for {args.s3_down_s:g} s, PostgreSQL restarted",
        ["day", "snapshot rows", "predictions rows", "db rows", "db distinct ids", "scoring_runs", "verdict"],
        verdicts,
    )
    print_table("runs", ["run", "status", "run (s)", "step retries"], [[r["run_id"][:8], r["status"], r["run_s"], r["step_retries"]] for r in run_reports])
    for r in run_reports:
        for message in r["step_failures"]:
            print(f"  {r['run_id'][:8]}: {message}")
    for asset, counts in materialized.items():
        print(f"{asset}: materializations per day {sorted(set(counts.values()))} (days with more than one: "
              f"{[d for d, n in counts.items() if n != 1]})")
    print(f"\nbackfill {status} in {wall:.1f} s; days ok: {sum(v[-1] == 'ok' for v in verdicts)}/{len(days)}; "
          f"other runs: {[(r['status'], {t['key']: t['value'] for t in r['tags']}.get('batchinfer/trigger')) for r in other_runs]}")
    results.update(
        status=status, wall_s_backfill=wall, materializations_per_day=materialized, timeline=timeline, runs=run_reports, verification=verdicts,
        other_runs=[{"status": r["status"], "tags": r["tags"]} for r in other_runs],
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True)
    kill = sub.add_parser("kill", help="SIGKILL at a random moment of each stage")
    kill.add_argument("--kills", type=int, default=20)
    kill.add_argument("--rows", type=int, default=20_000)
    kill.add_argument("--stages", nargs="*", choices=list(KILL_STAGES))
    kill.add_argument("--seed", type=int, default=13)
    kill.add_argument("--at-write", type=int, default=0, help="extra kills per stage as it begins writing (its staging folder appears; publish: SQLite's WAL grows)")
    kill.add_argument("--keep", action="store_true", help="keep the temporary home for inspection")
    concurrent = sub.add_parser("concurrent", help="concurrent one-day runs on a PostgreSQL instance")
    concurrent.add_argument("--days", type=int, default=10)
    concurrent.add_argument("--rows", type=int, default=20_000)
    concurrent.add_argument("--timeout", type=float, default=1200)
    concurrent.add_argument("--keep", action="store_true")
    backfill = sub.add_parser("backfill", help="a backfill on S3 and PostgreSQL with both killed or restarted")
    backfill.add_argument("--days", type=int, default=30)
    backfill.add_argument("--rows", type=int, default=20_000)
    backfill.add_argument("--s3-down-s", type=float, default=15)
    backfill.add_argument("--timeout", type=float, default=1800)
    backfill.add_argument("--keep", action="store_true")
    for p in sub.choices.values():
        p.add_argument("--out", type=Path)
    args = parser.parse_args()
    scenario = {"kill": scenario_kill, "concurrent": scenario_concurrent, "backfill": scenario_backfill}[args.scenario]
    started = time.time()
    results = scenario(args)
    results["wall_s"] = round(time.time() - started, 1)
    results["command"] = " ".join(sys.argv)
    write_json(args.out or RESULTS / f"faults-{args.scenario}.json", results)


if __name__ == "__main__":
    main()
