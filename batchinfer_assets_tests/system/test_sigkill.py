"""SIGKILL in the middle of scoring and of publishing never leaves a day's files or rows partial.

Drives `benchmarks/faults.py kill` (the measurement in BENCHMARKS.md, "Reliability under load and faults") at a
small size: a real process killed with SIGKILL as the stage begins writing (predictions: its staging folder
appears; publish: the day's transaction grows SQLite's write-ahead log), then the visible files, the database
rows, a normal rerun and the staging cleanup are checked. No timing is asserted: a kill that lands after the
child finished is checked all the same. About a minute on two busy cores (most of it Dagster runs that prepare
each kill); the random-moment kills, 20 per stage, are the benchmark's.
"""

import json
import os
import subprocess
import sys

from batchinfer_assets_tests.system.dagster_processes import REPO


def test_sigkill_during_predictions_and_publish_leaves_old_or_new_complete(tmp_path, demo_model_store):
    out = tmp_path / "kill.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": demo_model_store.tracking_uri}
    command = [
        sys.executable, str(REPO / "benchmarks" / "faults.py"), "kill", "--kills", "0", "--at-write", "1",
        "--stages", "predictions", "publish", "--rows", "1000", "--out", str(out),
    ]
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    stages = json.loads(out.read_text())["stages"]
    assert set(stages) == {"predictions", "publish"}
    trials = [t for stage in stages.values() for t in stage["trials"]]
    assert len(trials) == 2
    assert [t["problems"] for t in trials] == [[]] * len(trials), trials
