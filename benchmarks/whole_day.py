"""One day through the whole pipeline via the real CLI, against a plain script doing the same work on the same files.

    python benchmarks/whole_day.py --rows 1000000 [--repeats 1] [--day 2025-03-03] [--pipeline-only] [--in-process]
                                   [--source landing|synthetic]

Per repeat, in a fresh temporary BATCHINFER_HOME and DAGSTER_HOME (the demo model is registered once
beforehand, outside every timing). With `--source landing` (the default) the synthetic day is first landed
as Parquet in a landing zone (`BATCHINFER_LANDING_URI`, outside the timings), as a user's upstream system
lands it, and both the pipeline and the plain script start from those files; with `--source synthetic` the
pipeline's `raw_transactions` generates the day itself (the demo's source) and the plain script reads what
the pipeline stored.

(a) `dg launch --job daily_scoring_job --partition DAY` exactly as a user runs it (cwd = the repo root,
    DAGSTER_HOME holding a copy of dagster.yaml): the CLI's wall clock, the peak RSS of its largest process
    (`/usr/bin/time -v`, the kernel's figure) and of the whole process tree (summed, polled from /proc every
    50 ms), and, read back from the run's event log, the step's duration, each stage's own debug line
    (`"{day}: {stage} in {s} s"`) and where the rest of the wall clock went.
(b) right after, in a fresh process: a plain script a user would write without the framework on the same raw
    Parquet files (the landing zone's, or `storage/raw_transactions/dt=DAY/*.parquet`): pyarrow read,
    vectorised validation checks with a quarantine file, the project's pure `build_features`, the model input
    written once, `mlflow.pytorch.load_model` + a torch loop in batches of 65,536 + predictions Parquet,
    per-column KS and Wasserstein drift with scipy against the model's training sample, and an `executemany`
    into a fresh SQLite table (plus its two lookup indexes). Each part is timed.
(c) the `predictions` stage as the user waits for it (resolve the model, wait for its load if it is not ready
    yet, score, write) against `mlflow.pyfunc.load_model(uri).predict(frame)` + `to_parquet`, and against a
    hand-written batched loop (load + stream + score + write), each in a fresh process, on the snapshot the
    pipeline just wrote. Each alternative's clock starts where the pipeline's does: numpy, pandas and pyarrow
    imported (the step process has them), mlflow and torch not (the step imports them itself, and its clock
    counts them).

`--pipeline-only` runs (a) alone (used for the 10M-row day); `--in-process` launches with the in_process
executor (`--config-json`) instead of the job's default multiprocess one, for comparison. The largest
process's RSS is also sampled every 50 ms, so each stage gets the peak reached while it ran. `range_memory.py`
reuses the CLI runner.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
JOB = "daily_scoring_job"
DAY = "2025-03-03"
MODEL_URI = "models:/fraud-detector@champion"
BATCH = 65_536
STAGE_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2}): ([\w/]+) in ([0-9.]+) s$")
STAGES = (
    "raw_transactions",
    "transaction_features/quarantined_transactions",
    "input_snapshot",
    "predictions",
    "drift_metrics",
    "published_predictions",
    "prediction_performance",
)


# --------------------------------------------------------------------------------------------------------------
# Memory of a process tree, from /proc (no psutil in the project's environment).


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssShmem:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                kids += [int(k) for k in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def _cmdline(pid: int) -> str:
    try:
        parts = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return "?"
    text = " ".join(p.decode(errors="replace") for p in parts if p)
    return text[:120]


class TreeMonitor(threading.Thread):
    """Polls a process tree: the peak of its summed RSS, and each process's own peak (VmHWM, exact per process)."""

    def __init__(self, root_pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.peak_sum_kib = 0
        self.peak_sum_at_s = 0.0
        self.per_process: dict[int, dict] = {}
        # (epoch, summed RSS, RSS of the largest single process, its own (anonymous) part) per poll, in KiB.
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval_s)

    def sample(self) -> None:
        pids, queue = [], [self.root_pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            queue += _children(pid)
        total = largest = largest_anon = 0
        for pid in pids:
            status = _status_kib(pid)
            if not status:
                continue
            total += status.get("VmRSS", 0)
            if status.get("VmRSS", 0) > largest:
                largest, largest_anon = status["VmRSS"], status.get("RssAnon", 0)
            now = time.time()
            entry = self.per_process.setdefault(pid, {"cmd": _cmdline(pid), "hwm_kib": 0, "first_seen": now})
            entry["hwm_kib"] = max(entry["hwm_kib"], status.get("VmHWM", 0))
            # RSS splits into the process's own memory and shared pages it maps (a Ray driver's view of the object store).
            entry["anon_peak_kib"] = max(entry.get("anon_peak_kib", 0), status.get("RssAnon", 0))
            entry["shmem_peak_kib"] = max(entry.get("shmem_peak_kib", 0), status.get("RssShmem", 0))
            entry["last_seen"] = now
        self.samples.append((time.time(), total, largest, largest_anon))
        if total > self.peak_sum_kib:
            self.peak_sum_kib = total
            self.peak_sum_at_s = time.perf_counter() - self._t0

    def stop(self) -> None:
        self._halt.set()
        self.join()


# --------------------------------------------------------------------------------------------------------------
# Environment, model registration, the CLI run and its event log.


def bench_env(home: Path, dagster_home: Path, rows: int, tracking_uri: str, landing: Path | None = None) -> dict[str, str]:
    """The environment of a user who activated the venv and set the contract's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHINFER_", "MLFLOW_", "DAGSTER_"))}
    if landing is not None:
        env["BATCHINFER_LANDING_URI"] = str(landing)
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "VIRTUAL_ENV": str(VENV_BIN.parent),
            "BATCHINFER_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "BATCHINFER_DEMO_ROWS_PER_DAY": str(rows),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )
    return env


def register_model(model_home: Path) -> tuple[str, float]:
    """Train and register the demo model once in `model_home` (outside every timing); its tracking URI."""
    model_home.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{model_home / 'mlflow.db'}"
    code = (
        "from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource as R\n"
        f"r = R(tracking_uri={tracking_uri!r}, artifact_location={(model_home / 'mlartifacts').as_uri()!r}).resolve()\n"
        "print(r.pinned_uri)\n"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"registering the demo model failed:\n{done.stderr[-3000:]}")
    return tracking_uri, time.perf_counter() - started


def fresh_dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", path / "dagster.yaml")
    return path


def run_cli(partition_args: list[str], env: dict[str, str], log_path: Path, job: str | None = JOB) -> dict:
    """`dg launch --job daily_scoring_job <partition args>` from the repo root (`job=None`: the args select assets):
    wall clock, peak memory, exit code."""
    time_file = log_path.with_suffix(".time")
    selection = ["--job", job] if job else []
    cmd = ["/usr/bin/time", "-v", "-o", str(time_file), str(VENV_BIN / "dg"), "launch", *selection, *partition_args]
    load_before = os.getloadavg()[0]
    with open(log_path, "wb") as log:
        started_epoch = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        monitor = TreeMonitor(proc.pid)
        monitor.start()
        rc = proc.wait()
        wall = time.perf_counter() - started
        ended_epoch = time.time()
        monitor.stop()
    max_rss_kib = None
    for line in time_file.read_text().splitlines():
        if "Maximum resident set size" in line:
            max_rss_kib = int(line.rsplit(":", 1)[1])
    largest = max(monitor.per_process.values(), key=lambda e: e["hwm_kib"], default={"cmd": "?", "hwm_kib": 0})
    return {
        "command": " ".join(["dg", "launch", *selection, *partition_args]),
        "rc": rc,
        "wall_s": wall,
        "started_epoch": started_epoch,
        "ended_epoch": ended_epoch,
        "largest_process_peak_mib": (max_rss_kib or 0) / 1024,
        "largest_process_polled_peak_mib": largest["hwm_kib"] / 1024,
        "largest_process": largest["cmd"],
        "tree_sum_peak_mib": monitor.peak_sum_kib / 1024,
        "tree_sum_peak_at_s": monitor.peak_sum_at_s,
        "processes": {
            str(pid): {
                "cmd": e["cmd"],
                "peak_mib": round(e["hwm_kib"] / 1024, 1),
                "anon_peak_mib": round(e.get("anon_peak_kib", 0) / 1024, 1),
                "shmem_peak_mib": round(e.get("shmem_peak_kib", 0) / 1024, 1),
                "first_seen": e["first_seen"],
                "last_seen": e["last_seen"],
            }
            for pid, e in monitor.per_process.items()
        },
        "samples": monitor.samples,
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
        "log": str(log_path),
    }


def read_run(dagster_home: Path) -> dict:
    """The (only) run of the instance: status, step duration, stage lines, and the timeline's landmarks."""
    import dagster as dg

    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    try:
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs(limit=1)
            if not runs:
                return {"status": "NO RUN"}
            run = runs[0]
            entries = instance.all_logs(run.run_id)
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous
    marks: dict[str, float] = {}
    stages: dict[str, dict[str, float]] = {}
    windows: list[tuple[str, str, float, float]] = []
    errors = []
    # Loaded in the background while the first stages ran (the predictions stage's line includes any wait for it).
    load_work_s = model_wait_s = None
    for entry in entries:
        event = entry.dagster_event
        if event is not None:
            marks.setdefault(event.event_type_value, entry.timestamp)
            if event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE"):
                errors.append(entry.message or event.message or "")
            continue
        message = entry.user_message or ""
        match = STAGE_LINE.match(message)
        if match:
            stages.setdefault(match.group(1), {})[match.group(2)] = float(match.group(3))
            windows.append((match.group(1), match.group(2), entry.timestamp - float(match.group(3)), entry.timestamp))
        elif " day(s) " in message and "first_log" not in marks:
            marks["first_log"] = entry.timestamp
        elif message.startswith("model for this run:"):
            marks["resolved"] = entry.timestamp
        elif message.startswith("loaded "):
            marks["loaded"] = entry.timestamp
            loaded = re.search(r" in ([0-9.]+) s$", message)
            if loaded:
                load_work_s = float(loaded.group(1))
        elif message.startswith("model was ready when"):
            model_wait_s = 0.0
        elif message.startswith("model ready "):
            model_wait_s = float(message.split()[2])
        if entry.level >= 40:
            errors.append(message)
    if "first_log" in marks and "resolved" in marks:
        windows.insert(0, ("", "model resolve", marks["first_log"], marks["resolved"]))
    background = model_wait_s is not None
    if "resolved" in marks and "loaded" in marks and not background:
        windows.insert(1, ("", "model load", marks["resolved"], marks["loaded"]))
    out = {"run_id": run.run_id, "status": run.status.value, "marks": marks, "stages": stages, "windows": windows, "errors": errors,
           "background_load": background, "load_work_s": load_work_s, "model_wait_s": model_wait_s}
    if "STEP_START" in marks and "STEP_SUCCESS" in marks:
        out["step_s"] = marks["STEP_SUCCESS"] - marks["STEP_START"]
    if "first_log" in marks and "resolved" in marks:
        out["resolve_s"] = marks["resolved"] - marks["first_log"]
    if "resolved" in marks and "loaded" in marks:
        # The time the step spent loading before the days; none when the load ran beside the first stages.
        out["load_s"] = 0.0 if background else marks["loaded"] - marks["resolved"]
    return out


def stage_memory(cli: dict, run: dict) -> list[tuple[str, str, float, float]]:
    """(day, stage, seconds, peak RSS MiB of the largest process while it ran) from the poll's time series."""
    out = []
    for day, stage, start, end in run["windows"]:
        inside = [largest for t, _, largest, _ in cli["samples"] if start <= t <= end + 0.05]
        out.append((day, stage, end - start, max(inside, default=0) / 1024))
    return out


def timeline(cli: dict, run: dict) -> list[tuple[str, float]]:
    """Where the CLI's wall clock went: intervals between the CLI's start and end, the event log's landmarks and
    the step process's last sighting (a landmark that does not occur, e.g. with the in_process executor, is skipped)."""
    m = run["marks"]
    step_process_gone = max((p["last_seen"] for p in cli["processes"].values() if "spawn_main" in p["cmd"]), default=None)
    first_event = min((m[k] for k in ("ASSET_MATERIALIZATION_PLANNED", "PIPELINE_START") if k in m), default=None)
    landmarks = [
        ("CLI start to the run's first event (dg imports, loading the code location, creating the run)", first_event),
        ("to PIPELINE_START (planned-materialization events)", m.get("PIPELINE_START")),
        ("to STEP_WORKER_STARTED (spawning the step process, its imports)", m.get("STEP_WORKER_STARTED")),
        ("to STEP_START (the step process loads the definitions, inits resources)", m.get("STEP_START")),
        ("STEP_START to STEP_SUCCESS (the step)", m.get("STEP_SUCCESS")),
        ("to the step process gone (its interpreter's exit; last seen by the 50 ms poll)", step_process_gone),
        ("to PIPELINE_SUCCESS (the executor winds down)", m.get("PIPELINE_SUCCESS")),
        ("to the CLI's exit", cli["ended_epoch"]),
    ]
    out, previous = [], cli["started_epoch"]
    for label, at in landmarks:
        if at is not None:
            out.append((label, at - previous))
            previous = at
    return out


# --------------------------------------------------------------------------------------------------------------
# Children: the plain script, and the two scoring alternatives. Each runs in a fresh process.


def _peak_mib() -> float:
    return _status_kib(os.getpid()).get("VmHWM", 0) / 1024


def _model_version(tracking_uri: str) -> tuple[str, str, str]:
    from mlflow import MlflowClient

    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias("fraud-detector", "champion")
    return version.name, str(version.version), version.run_id


def _torch_callable(loaded):
    """What mlflow.pytorch.load_model gave, in eval mode where it allows it (a pt2 one does not)."""
    import torch

    if not isinstance(loaded, torch.nn.Module) and hasattr(loaded, "module"):
        loaded = loaded.module()
    try:
        loaded.eval()
    except NotImplementedError:
        pass  # an exported program's module refuses eval(); it was traced in eval semantics
    return loaded


def child_plain(raw_dir: str, day: str, out_dir: str) -> dict:
    """The plain script: read, validate, featurize, score, drift, publish; every part timed."""
    t = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        t[name] = now - clock
        clock = now

    import datetime as dt
    import itertools
    import sqlite3

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from scipy.stats import ks_2samp, wasserstein_distance

    from batchinfer_assets.domains.card_transactions.features import CALENDAR_FEATURES, FEATURE_COLUMNS, build_features

    lap("imports")
    out = Path(out_dir)
    tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
    start = time.perf_counter()
    # Inside the clock, as in the step (whose process has numpy, pandas, pyarrow and scipy loaded, not these).
    import mlflow
    import mlflow.pytorch
    import torch

    lap("import mlflow + torch")

    # Read the landed day.
    files = sorted(Path(raw_dir).glob("*.parquet"))
    table = pq.read_table(files)
    lap("read raw Parquet (pyarrow)")

    # Validate: the landing contract's rules, vectorised; failing rows go to a quarantine file.
    day_start = pd.Timestamp(day, tz="UTC")
    day_end = day_start + pd.Timedelta(days=1)
    ids = table.column("transaction_id")
    bad = np.array(pd.Series(ids.to_pandas()).duplicated(keep="first"), dtype=bool)
    for name in ("transaction_id", "event_time", "customer_id", "merchant_category", "amount", "currency", "channel", "country"):
        bad |= table.column(name).is_null().to_numpy(zero_copy_only=False)
    event_time = table.column("event_time")
    bad |= ~pc.fill_null(
        pc.and_(pc.greater_equal(event_time, pa.scalar(day_start, event_time.type)), pc.less(event_time, pa.scalar(day_end, event_time.type))),
        False,
    ).to_numpy(zero_copy_only=False)
    amount = table.column("amount")
    bad |= ~pc.fill_null(pc.and_(pc.greater_equal(amount, 0.0), pc.is_finite(amount)), False).to_numpy(zero_copy_only=False)
    bad |= ~pc.fill_null(pc.match_substring_regex(table.column("currency"), r"^[A-Z]{3}$"), False).to_numpy(zero_copy_only=False)
    bad |= ~pc.fill_null(pc.match_substring_regex(table.column("country"), r"^[A-Z]{2}$"), False).to_numpy(zero_copy_only=False)
    bad |= ~pc.fill_null(pc.is_in(table.column("channel"), pa.array(["pos", "online", "atm"])), False).to_numpy(zero_copy_only=False)
    pq.write_table(table.filter(pa.array(bad)), out / "quarantine.parquet")
    valid_table = table.filter(pa.array(~bad))
    valid = valid_table.to_pandas()
    lap("validate (pyarrow.compute checks) + write quarantine")

    features = build_features(valid)
    lap("features (the project's build_features)")
    matrix = features.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype=np.float32)
    if not np.isfinite(matrix).all() or features["transaction_id"].duplicated().any():
        raise SystemExit("model input not finite or ids repeated")
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), out / "model_input.parquet")
    lap("check finite + write model input Parquet")

    # Score.
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    mlflow.set_tracking_uri(tracking_uri)
    name, version, run_id = _model_version(tracking_uri)
    model = _torch_callable(mlflow.pytorch.load_model(MODEL_URI))
    lap("load model (mlflow.pytorch.load_model)")
    scores = np.empty(len(matrix), dtype=np.float32)
    with torch.inference_mode():
        for lo in range(0, len(matrix), BATCH):
            scores[lo : lo + BATCH] = model(torch.from_numpy(matrix[lo : lo + BATCH])).reshape(-1).numpy()
    labels = (scores >= 0.5).astype(np.int8)
    n = len(scores)
    predictions = pa.table(
        {
            "transaction_id": pa.array(features["transaction_id"]),
            "score": scores,
            "label": labels,
            "model_name": pa.array(itertools.repeat(name, n), pa.string()),
            "model_version": pa.array(itertools.repeat(version, n), pa.string()),
        }
    )
    pq.write_table(predictions, out / "predictions.parquet")
    lap("score (torch loop, 65,536 a batch) + write predictions Parquet")

    # Drift against the training sample.
    reference = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reference/training_sample.parquet", dst_path=str(out)))
    current = features.loc[:, list(FEATURE_COLUMNS)].assign(score=scores)
    rows = []
    for column in [c for c in [*FEATURE_COLUMNS, "score"] if c not in CALENDAR_FEATURES and c in reference.columns]:
        cur, ref = current[column].to_numpy(np.float64), reference[column].to_numpy(np.float64)
        ks = ks_2samp(cur, ref)
        rows.append({"feature": column, "ks": ks.statistic, "ks_p": ks.pvalue, "wasserstein": wasserstein_distance(cur, ref)})
    pd.DataFrame(rows).to_parquet(out / "drift.parquet")
    lap("drift (scipy KS + Wasserstein per column vs training sample)")

    # Publish to a fresh SQLite table.
    con = sqlite3.connect(out / "predictions.db")
    con.execute(
        "CREATE TABLE predictions (transaction_id TEXT PRIMARY KEY, dt TEXT, score REAL, label INTEGER, "
        "model_version TEXT, customer_id TEXT, event_time TEXT, amount REAL, merchant_category TEXT)"
    )

    def column(name: str) -> list:
        return valid_table.column(name).to_numpy(zero_copy_only=False).tolist()

    with con:
        con.executemany(
            "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            zip(
                features["transaction_id"].tolist(),
                itertools.repeat(day, n),
                scores.tolist(),
                labels.tolist(),
                itertools.repeat(version, n),
                column("customer_id"),
                pc.cast(valid_table.column("event_time"), pa.string()).to_numpy(zero_copy_only=False).tolist(),
                column("amount"),
                column("merchant_category"),
            ),
        )
        con.execute("CREATE INDEX predictions_dt_score ON predictions (dt, score)")
    con.close()
    lap("publish (sqlite3 executemany, one transaction, + index)")

    total = time.perf_counter() - start
    return {"parts": t, "total_s": total, "rows": n, "quarantined": int(bad.sum()), "peak_rss_mib": _peak_mib(), "day": dt.date.fromisoformat(day).isoformat()}


def child_pyfunc(snapshot_dir: str, out_dir: str) -> dict:
    """mlflow.pyfunc: load by the alias URI, read the snapshot into pandas, predict, to_parquet.

    The clock starts with numpy, pandas and pyarrow imported (as in the pipeline's step) and counts importing
    mlflow and looking the version up (the pipeline's resolve does both)."""
    import numpy as np
    import pandas as pd  # noqa: F401 - imported before the clock, as in the step
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    import mlflow.pyfunc

    imports = time.perf_counter() - t0
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    name, version, _ = _model_version(os.environ["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model(MODEL_URI)
    t1 = time.perf_counter()
    frame = pq.read_table(sorted(Path(snapshot_dir).glob("*.parquet"))).to_pandas()
    t2 = time.perf_counter()
    columns = [c.name for c in model.metadata.get_input_schema().inputs]
    scores = np.asarray(model.predict(frame[columns])).reshape(-1).astype(np.float32)
    t3 = time.perf_counter()
    out = frame[["transaction_id"]].assign(score=scores, label=(scores >= 0.5).astype(np.int8), model_name=name, model_version=version)
    out.to_parquet(Path(out_dir) / "pyfunc.parquet", index=False)
    t4 = time.perf_counter()
    return {
        "imports_s": imports,
        "load_s": t1 - t0,
        "read_s": t2 - t1,
        "predict_s": t3 - t2,
        "write_s": t4 - t3,
        "total_s": t4 - t0,
        "rows": len(out),
        "peak_rss_mib": _peak_mib(),
    }


def child_loop(snapshot_dir: str, out_dir: str) -> dict:
    """A hand-written loop: mlflow.pytorch.load_model, stream the snapshot 65,536 rows at a time, forward, write.

    Clock as in `child_pyfunc`: it counts importing mlflow and torch and looking the version up."""
    import numpy as np
    import pandas as pd  # noqa: F401 - imported before the clock, as in the step
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    import mlflow.pytorch
    import torch
    from mlflow.models import get_model_info

    imports = time.perf_counter() - t0
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    name, version, _ = _model_version(os.environ["MLFLOW_TRACKING_URI"])
    module = _torch_callable(mlflow.pytorch.load_model(MODEL_URI))
    columns = [c.name for c in get_model_info(MODEL_URI).signature.inputs.inputs]
    t1 = time.perf_counter()
    schema = pa.schema([("transaction_id", pa.large_string()), ("score", pa.float32()), ("label", pa.int8()), ("model_name", pa.string()), ("model_version", pa.string())])
    rows = 0
    with pq.ParquetWriter(Path(out_dir) / "loop.parquet", schema) as writer, torch.inference_mode():
        for path in sorted(Path(snapshot_dir).glob("*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=["transaction_id", *columns]):
                matrix = np.column_stack([batch.column(c).to_numpy() for c in columns])
                scores = module(torch.from_numpy(matrix)).reshape(-1).numpy()
                n = batch.num_rows
                writer.write_batch(
                    pa.record_batch(
                        [
                            batch.column("transaction_id").cast(pa.large_string()),
                            pa.array(scores),
                            pa.array((scores >= 0.5).astype(np.int8)),
                            pa.array([name] * n, pa.string()),
                            pa.array([version] * n, pa.string()),
                        ],
                        schema=schema,
                    )
                )
                rows += n
    t2 = time.perf_counter()
    return {"imports_s": imports, "load_s": t1 - t0, "score_write_s": t2 - t1, "total_s": t2 - t0, "rows": rows, "peak_rss_mib": _peak_mib()}


def child_land(rows: int, day: str, landing: str) -> dict:
    """Land the synthetic day as a Parquet file in the landing zone, as an upstream system would."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchinfer_assets.domain import load_domain
    from batchinfer_assets.resources.landing_zone import SyntheticLandingZoneResource

    frame = SyntheticLandingZoneResource(rows_per_day=rows).load_day(dt.date.fromisoformat(day), load_domain(None))
    folder = Path(landing) / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-00000.parquet")
    return {"rows": len(frame), "folder": str(folder)}


def child_generate(rows: int, day: str) -> dict:
    """How long the synthetic landing zone takes to produce the day (part of the pipeline's raw_transactions stage)."""
    import datetime as dt

    from batchinfer_assets.domain import load_domain
    from batchinfer_assets.resources.landing_zone import SyntheticLandingZoneResource

    started = time.perf_counter()
    frame = SyntheticLandingZoneResource(rows_per_day=rows).load_day(dt.date.fromisoformat(day), load_domain(None))
    return {"generate_s": time.perf_counter() - started, "rows": len(frame)}


CHILDREN = {"plain": child_plain, "pyfunc": child_pyfunc, "loop": child_loop, "generate": child_generate, "land": child_land}


def run_child(kind: str, args: list[str], env: dict[str, str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------------------------
# The benchmark.


IN_PROCESS = ["--config-json", json.dumps({"execution": {"config": {"in_process": {}}}})]


def one_repeat(
    workdir: Path, rows: int, day: str, tracking_uri: str, pipeline_only: bool, in_process: bool = False, source: str = "landing"
) -> dict:
    home = workdir / "home"
    dagster_home = fresh_dagster_home(workdir / "dagster_home")
    landing = workdir / "landing" if source == "landing" else None
    env = bench_env(home, dagster_home, rows, tracking_uri, landing)
    if landing is not None:
        run_child("land", [str(rows), day, str(landing)], env)  # outside the timings: the upstream system's work
    cli = run_cli(["--partition", day, *(IN_PROCESS if in_process else [])], env, workdir / "cli.log")
    run = read_run(dagster_home)
    result = {
        "rows": rows, "day": day, "in_process": in_process, "source": source, "cli": cli, "run": run, "timeline": timeline(cli, run)
    }
    brief = {k: v for k, v in cli.items() if k not in ("processes", "samples")}
    print(json.dumps({"cli": brief, "status": run["status"], "step_s": run.get("step_s")}), flush=True)
    if cli["rc"] != 0 or run["status"] != "SUCCESS":
        tail = (workdir / "cli.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"the CLI run failed (rc {cli['rc']}, {run['status']}): {run.get('errors')}\n{tail}")
    if pipeline_only:
        return result
    # `predictions` alone on the same day, as a user re-scores it (nothing runs beside the model's load).
    alone_cli = run_cli(["--assets", "predictions", "--partition", day], env, workdir / "cli_predictions.log", job=None)
    alone = read_run(dagster_home)
    if alone_cli["rc"] != 0 or alone["status"] != "SUCCESS":
        raise RuntimeError(f"the predictions-only run failed: {alone.get('errors')}")
    result["predictions_alone"] = {"wall_s": alone_cli["wall_s"], "run": alone}
    storage = home / "storage"
    out = workdir / "plain"
    out.mkdir()
    raw = landing / f"dt={day}" if landing is not None else storage / "raw_transactions" / f"dt={day}"
    result["plain"] = run_child("plain", [str(raw), day, str(out)], env)
    print(json.dumps({"plain": result["plain"]}), flush=True)
    result["generate"] = run_child("generate", [str(rows), day], env)
    snapshot = str(storage / "input_snapshot" / f"dt={day}")
    for kind in ("pyfunc", "loop"):
        scratch = workdir / kind
        scratch.mkdir()
        result[kind] = run_child(kind, [snapshot, str(scratch)], env)
        print(json.dumps({kind: result[kind]}), flush=True)
    return result


def report(result: dict) -> str:
    run, cli = result["run"], result["cli"]
    stages = run["stages"][result["day"]]
    stage_sum = sum(stages.values())
    memory = {stage: peak for _, stage, _, peak in stage_memory(cli, run)}
    loading = run.get("resolve_s", 0) + run.get("load_s", 0)
    lines = [
        f"### {result['rows']:,} rows, day {result['day']}{' (in-process executor)' if result.get('in_process') else ''}",
        "",
        f"`{cli['command']}`: wall {cli['wall_s']:.1f} s; step (STEP_START to STEP_SUCCESS) {run['step_s']:.2f} s; "
        f"sum of the stage lines {stage_sum:.2f} s; model resolve {run.get('resolve_s', float('nan')):.2f} s, "
        f"load {run.get('load_s', float('nan')):.2f} s (before the day loop).",
        f"Peak RSS: largest process {cli['largest_process_peak_mib']:,.0f} MiB (`/usr/bin/time -v`), whole tree summed "
        f"{cli['tree_sum_peak_mib']:,.0f} MiB (polled). Load average (1 min) before/after: "
        f"{cli['loadavg_1m_before']:.2f}/{cli['loadavg_1m_after']:.2f}.",
        "",
        "| where the CLI's wall clock went | s |",
        "| --- | ---: |",
        *[f"| {label} | {seconds:.2f} |" for label, seconds in result["timeline"]],
        f"| total (wall) | {cli['wall_s']:.2f} |",
        "",
        f"- CLI wall / step: {cli['wall_s'] / run['step_s']:.2f} (goal <= 2.0)",
    ]
    if "plain" not in result:
        lines += [
            "",
            "| stage | s | peak RSS of the largest process during it, MiB |",
            "| --- | ---: | ---: |",
            f"| model resolve | {run.get('resolve_s', float('nan')):.2f} | {memory.get('model resolve', 0):,.0f} |",
            f"| model load | {run.get('load_s', float('nan')):.2f} | {memory.get('model load', 0):,.0f} |",
            *[f"| {stage} | {seconds:.2f} | {memory.get(stage, 0):,.0f} |" for stage, seconds in stages.items()],
        ]
        return "\n".join(lines)
    background_note = (
        f"; the load itself, {run['load_work_s']:.2f} s, ran beside the first stages" if run.get("background_load") else ""
    )
    plain = result["plain"]
    parts = plain["parts"]
    names = list(parts)
    # Which plain parts correspond to which stage.
    mapping = [
        (STAGES[0], [n for n in names if n.startswith("read raw")]),
        (STAGES[1], [n for n in names if n.startswith(("validate", "features"))]),
        (STAGES[2], [n for n in names if n.startswith("check finite")]),
        (STAGES[3], [n for n in names if n.startswith(("import mlflow", "load model", "score"))]),
        (STAGES[4], [n for n in names if n.startswith("drift")]),
        (STAGES[5], [n for n in names if n.startswith("publish")]),
        (STAGES[6], []),  # the plain script does not evaluate the model's performance
    ]
    lines += [
        "",
        "| stage (pipeline) | pipeline s | peak RSS during it MiB | plain script part(s) | plain s |",
        "| --- | ---: | ---: | --- | ---: |",
        f"| model resolve + load (in the step, before the days{background_note}) | {loading:.2f} | "
        f"{max(memory.get('model resolve', 0), memory.get('model load', 0)):,.0f} | (in `load model` below) | |",
    ]
    for stage, part_names in mapping:
        lines.append(
            f"| {stage} | {stages.get(stage, float('nan')):.2f} | {memory.get(stage, 0):,.0f} | {'; '.join(part_names)} | "
            f"{sum(parts[n] for n in part_names):.2f} |"
        )
    generate = result["generate"]["generate_s"]
    performance = stages.get(STAGES[6], 0.0)
    lines += [
        f"| **the step** (STEP_START to STEP_SUCCESS) / **plain total** (mlflow and torch imports inside) | **{run['step_s']:.2f}** | "
        f"{cli['largest_process_peak_mib']:,.0f} | | **{plain['total_s']:.2f}** |",
        f"| imports outside the clock (plain: numpy, pandas, pyarrow, scipy; the step's process has them) | | | | {parts['imports']:.2f} |",
        "",
        f"Source: {result.get('source', 'synthetic')}. Synthetic generation of the day alone ("
        + ("inside `raw_transactions`; the plain script reads the stored raw files instead" if result.get("source") == "synthetic"
           else "done before the run, outside both timings, when it was landed")
        + f"): {generate:.2f} s. Plain script peak RSS {plain['peak_rss_mib']:,.0f} MiB, process wall {plain['process_wall_s']:.1f} s.",
        "",
        f"- step / plain total: {run['step_s'] / plain['total_s']:.2f} (goal <= 1.0); stage sum + model resolve/load / "
        f"plain total: {(stage_sum + loading) / plain['total_s']:.2f}",
        f"- step minus prediction_performance (no counterpart in the plain script) / plain total: "
        f"{(run['step_s'] - performance) / plain['total_s']:.2f}",
    ]
    if result.get("source") == "synthetic":
        lines.append(f"- step minus synthetic generation / plain total: {(run['step_s'] - generate) / plain['total_s']:.2f}")
    pyfunc, loop = result["pyfunc"], result["loop"]
    waited = loading + stages["predictions"]
    best = min(pyfunc["total_s"], loop["total_s"])
    wait = run.get("model_wait_s")
    pipeline_row = (
        f"| pipeline: resolve (imports mlflow) + `predictions` stage, which waited {wait:.2f} s for the model loaded beside "
        f"the first stages (its load {run['load_work_s']:.2f} s, first `import torch` inside) | {loading:.2f} | "
        if run.get("background_load")
        else "| pipeline: resolve (imports mlflow) + load (its first `import torch` inside) + `predictions` stage | "
        f"{loading:.2f} | "
    )
    alone = result["predictions_alone"]["run"]
    alone_waited = alone.get("resolve_s", 0) + alone.get("load_s", 0) + alone["stages"][result["day"]]["predictions"]
    alone_note = (
        f"| pipeline, `predictions` alone (`dg launch --assets predictions`, nothing to load beside): resolve + load "
        f"(in the stage: it waited {alone.get('model_wait_s') or 0:.2f} s, load {alone.get('load_work_s') or 0:.2f} s) + stage | "
        f"{alone.get('resolve_s', 0) + alone.get('load_s', 0):.2f} | | {alone_waited:.2f} | (inside) | |"
    )
    lines += [
        "",
        "| predictions, as the user waits for it (clocks start with numpy, pandas, pyarrow imported; mlflow, torch not) "
        "| load s (mlflow/torch imports inside) | score (+ read, write) s | total s | of which importing mlflow/torch s | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        pipeline_row + f"{stages['predictions']:.2f} | {waited:.2f} | (inside) | (the step's) |",
        alone_note,
        f"| `mlflow.pyfunc.load_model(uri).predict(frame)` + `to_parquet` (read {pyfunc['read_s']:.2f}, "
        f"predict {pyfunc['predict_s']:.2f}, write {pyfunc['write_s']:.2f}) | {pyfunc['load_s']:.2f} | "
        f"{pyfunc['read_s'] + pyfunc['predict_s'] + pyfunc['write_s']:.2f} | {pyfunc['total_s']:.2f} | {pyfunc['imports_s']:.2f} | "
        f"{pyfunc['peak_rss_mib']:,.0f} |",
        f"| hand-written loop (`mlflow.pytorch.load_model`, pyarrow batches of 65,536, torch, ParquetWriter) | "
        f"{loop['load_s']:.2f} | {loop['score_write_s']:.2f} | {loop['total_s']:.2f} | {loop['imports_s']:.2f} | "
        f"{loop['peak_rss_mib']:,.0f} |",
        "",
        f"- pipeline / faster alternative: {waited / best:.2f} (goal <= 1.1); `predictions` run alone / faster "
        f"alternative: {alone_waited / best:.2f}; `predictions` stage alone / faster "
        f"alternative's read+score+write: {stages['predictions'] / min(pyfunc['total_s'] - pyfunc['load_s'], loop['score_write_s']):.2f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--day", default=DAY)
    parser.add_argument("--pipeline-only", action="store_true", help="run (a) alone: the CLI, its memory and stage times")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="launch with the in_process executor (--config-json), to compare with the default multiprocess one",
    )
    parser.add_argument(
        "--source",
        choices=("landing", "synthetic"),
        default="landing",
        help="landing: the day is landed as Parquet first and read from BATCHINFER_LANDING_URI by both sides; "
        "synthetic: the pipeline generates it (the demo source)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given; a temporary folder otherwise")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind in ("generate", "land"):
            rest = [int(rest[0]), *rest[1:]]
        print(json.dumps(CHILDREN[kind](*rest)))
        return
    workdir = args.workdir.absolute() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-whole-day-"))
    try:
        tracking_uri, seconds = register_model(workdir / "model")
        print(f"demo model registered in {seconds:.1f} s (not timed below)", flush=True)
        results = []
        for repeat in range(args.repeats):
            result = one_repeat(
                workdir / f"repeat{repeat}", args.rows, args.day, tracking_uri, args.pipeline_only, args.in_process, args.source
            )
            results.append(result)
            print(report(result), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
