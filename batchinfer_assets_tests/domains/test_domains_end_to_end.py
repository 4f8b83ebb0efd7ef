"""Domains end to end through the commands users type: the built-in churn domain, and a user's domain in its own folder."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from batchinfer_assets.domain import load_domain
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fleet_breakdowns"
BIN = Path(sys.executable).parent
TIMEOUT_S = 600


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
    return done


def published(home: Path) -> tuple[list[str], pd.DataFrame]:
    """The predictions view's columns and rows, as an app reads them."""
    with sqlite3.connect(home / "predictions.db") as conn:
        rows = pd.read_sql("select * from predictions order by dt", conn)
    return list(rows.columns), rows


def test_the_churn_domain_runs_from_the_cli_with_its_own_columns_model_and_labels(tmp_path):
    home = tmp_path / "home"
    env = {
        **os.environ,
        "BATCHINFER_HOME": str(home),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "BATCHINFER_DOMAIN": "batchinfer_assets.domains.customer_churn:domain",
        "BATCHINFER_DEMO_ROWS_PER_DAY": "600",
    }
    (tmp_path / "dagster").mkdir()
    # The churn demo model (churn-predictor) is trained through the training set and registered on first use.
    run([str(BIN / "dg"), "launch", "--job", "daily_scoring_job", "--partition-range", "2025-03-01...2025-03-02"], env, REPO)

    columns, rows = published(home)
    assert columns[:2] == ["dt", "customer_day_id"] and {"customer_id", "plan", "monthly_fee"} <= set(columns)
    assert "transaction_id" not in columns and len(rows) == 1200
    assert all(id_.endswith(day) for id_, day in zip(rows["customer_day_id"], rows["dt"]))
    store = PartitionedParquetStore(home / "storage")
    performance = store.read_partition("prediction_performance", "2025-03-01").to_pandas().set_index("kind")
    # Churn labels land 28-35 days after the day: long since, so most rows are labelled and judged.
    assert performance.loc["realized", "n_labelled"] > 500 and performance.loc["realized", "roc_auc"] > 0.6
    drift = store.read_partition("drift_metrics", "2025-03-02").to_pandas()
    assert set(load_domain(env["BATCHINFER_DOMAIN"]).feature_columns) - {"plan_other"} <= set(drift["feature"])

    training = tmp_path / "churn_training.parquet"
    run([sys.executable, "-m", "batchinfer_assets.training_set", "2025-03-01", "2025-03-02", str(training)], env, REPO)
    table = pq.read_table(training)
    domain = load_domain(env["BATCHINFER_DOMAIN"])
    assert table.column_names == ["customer_day_id", "dt", *domain.feature_columns, "churned"]
    scored = rows.set_index("customer_day_id")
    assert set(table.column("customer_day_id").to_pylist()) == set(scored.index)


def land_fleet_days(landing: Path, labels: Path, days: list[dt.date], rows: int = 400) -> None:
    """What the user's upstream systems land: each van's day, and a few days later whether it broke down."""
    for day in days:
        rng = np.random.default_rng(day.toordinal())
        frame = pd.DataFrame(
            {
                "reading_id": [f"{day}-v{j:04d}" for j in range(rows)],
                "van_id": [f"v{j:04d}" for j in range(rows)],
                "km_driven": rng.gamma(2.0, 60.0, rows),
                "engine_temp_c": rng.normal(92, 8, rows),
                "age_years": rng.integers(0, 15, rows),
            }
        )
        # Two readings the fleet's rules refuse: negative kilometres, an engine hotter than any engine runs.
        frame.loc[0, "km_driven"] = -5.0
        frame.loc[1, "engine_temp_c"] = 900.0
        (landing / f"dt={day}").mkdir(parents=True)
        frame.to_parquet(landing / f"dt={day}" / "part-0.parquet", index=False)
        risk = (0.0003 * frame["km_driven"] + 0.25 * (frame["engine_temp_c"] > 100) + 0.1 * (frame["age_years"] >= 8)).clip(0, 0.9)
        truth = pd.DataFrame(
            {
                "reading_id": frame["reading_id"],
                "broke_down": (rng.random(rows) < risk).astype("int8"),
                "labelled_at": pd.Timestamp(day + dt.timedelta(days=3), tz="UTC"),
            }
        )
        (labels / f"dt={day}").mkdir(parents=True)
        truth.to_parquet(labels / f"dt={day}" / "labels.parquet", index=False)


def test_a_users_domain_in_its_own_folder_runs_end_to_end_without_changing_the_package(tmp_path):
    project = tmp_path / "fleet_breakdowns"
    shutil.copytree(EXAMPLE, project)
    state = project / ".state"
    env = {
        **os.environ,
        # The user's folder on the path, as an installed project would be; the package as installed.
        "PYTHONPATH": os.pathsep.join([str(project), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "BATCHINFER_HOME": str(state),
        "DAGSTER_HOME": str(state / "dagster"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
        "BATCHINFER_LANDING_URI": str(project / "landing"),
        "BATCHINFER_LABELS_URI": str(project / "labels"),
        "BATCHINFER_DOMAIN": "fleet.domain:domain",
        "BATCHINFER_MODEL_URI": "models:/breakdowns@champion",
    }
    (state / "dagster").mkdir(parents=True)
    land_fleet_days(project / "landing", project / "labels", [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(10)])

    # The README's steps: a training set from the serving code, a model trained on it, then the pipeline.
    made = run([sys.executable, "-m", "batchinfer_assets.training_set", "2025-01-01", "2025-01-07", "train.parquet"], env, project)
    assert "2,786 rows of 7 day(s) of the fleet domain (14 quarantined rows left out)" in made.stdout
    run([sys.executable, "train.py", "train.parquet"], env, project)
    run([str(BIN / "dg"), "launch", "--assets", "*", "--partition-range", "2025-01-08...2025-01-10"], env, project)

    columns, rows = published(state)
    assert columns == [
        "dt", "reading_id", "score", "label", "model_name", "model_version", "van_id", "km_driven", "scoring_run_id",
    ]  # fmt: skip
    assert len(rows) == 3 * 398 and rows["model_name"].eq("breakdowns").all()
    store = PartitionedParquetStore(state / "storage")
    quarantined = store.read_partition("quarantined_transactions", "2025-01-08").to_pandas()
    assert sorted(quarantined["reason"]) == ["engine_temp_c: in_range(-40, 200)", "km_driven: greater_than_or_equal_to(0)"]
    performance = store.read_partition("prediction_performance", "2025-01-10").to_pandas().set_index("kind")
    assert performance.loc["realized", "n_labelled"] == 398 and performance.loc["realized", "roc_auc"] > 0.55
    assert set(store.read_partition("drift_metrics", "2025-01-10").column("feature").to_pylist()) >= {"log_km", "score"}
