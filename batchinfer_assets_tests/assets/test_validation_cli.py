"""Each landing breakage as real Parquet files, run through `dg launch` as a user runs it; and a run killed mid-write."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections import Counter
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.lib.parquet_store import STAGING_DIR, PartitionedParquetStore
from batchinfer_assets.domains.card_transactions.synthetic import generate_day
from batchinfer_assets.settings import Settings
from batchinfer_assets_tests.assets.test_validation import DAY, ROW_LEVEL_BREAKAGES, UPSTREAM, land

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 180


def _good_day(rows: int = 300) -> pd.DataFrame:
    return generate_day(dt.date.fromisoformat(DAY), rows)


def _missing_day(landing: Path) -> None:
    (landing / "dt=2025-01-02").mkdir(parents=True)


def _unreadable_file(landing: Path) -> None:
    folder = land(landing, _good_day())
    (folder / "part-1.parquet").write_bytes(b"PAR1 truncated by an interrupted upload")


def _missing_column(landing: Path) -> None:
    land(landing, _good_day().drop(columns=["channel"]))


def _uncastable_column(landing: Path) -> None:
    land(landing, _good_day().assign(amount=lambda f: f["amount"].map("{:.2f} EUR".format)))


def _empty_day(landing: Path) -> None:
    land(landing, _good_day().head(0))


STRUCTURAL_BREAKAGES = {
    "no landing data": (_missing_day, rf"no landing data for {DAY}: folder {{landing}}/dt={DAY} does not exist"),
    "unreadable file": (_unreadable_file, rf"landing file {{landing}}/dt={DAY}/part-1.parquet is not a readable Parquet file"),
    "missing column": (_missing_column, r"required column\(s\) missing: channel"),
    "uncastable column": (_uncastable_column, r"column 'amount' of type \S+ cannot be cast to float64"),
    "empty day": (_empty_day, rf"landing data for {DAY} at {{landing}}/dt={DAY}/ has no rows"),
}


@pytest.fixture
def cli_env(tmp_path: Path, demo_model_store: Settings) -> dict[str, str]:
    """The environment a user sets: a landing zone, local state, and the registry holding the demo model."""
    (tmp_path / "landing").mkdir()
    (tmp_path / "dagster_home").mkdir()
    return {
        **os.environ,
        "BATCHINFER_HOME": str(tmp_path / "home"),
        "BATCHINFER_LANDING_URI": str(tmp_path / "landing"),
        "MLFLOW_TRACKING_URI": demo_model_store.tracking_uri,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }


def _materialize_cli(env: dict[str, str], *assets: str, config: dict | None = None) -> subprocess.CompletedProcess:
    # dg finds the code location through [tool.dg] in the repo's pyproject.toml, as it does for users.
    command = [
        str(Path(sys.executable).parent / "dg"), "launch",
        "--assets", ",".join(assets),
        "--partition", DAY,
    ]  # fmt: skip
    if config is not None:
        command += ["--config-json", json.dumps(config)]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def _storage(env: dict[str, str]) -> Path:
    return Path(env["BATCHINFER_HOME"]) / "storage"


@pytest.mark.parametrize("breakage", list(STRUCTURAL_BREAKAGES))
def test_a_structural_breakage_fails_the_day_naming_the_problem(cli_env, breakage):
    landing = Path(cli_env["BATCHINFER_LANDING_URI"])
    write, message = STRUCTURAL_BREAKAGES[breakage]
    write(landing)

    run = _materialize_cli(cli_env, "raw_transactions")

    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "LandingDataError" in output
    assert re.search(message.format(landing=re.escape(str(landing))), output), output[-3000:]
    assert not (_storage(cli_env) / "raw_transactions").exists()


def test_an_empty_day_is_accepted_when_the_landing_zone_allows_it(cli_env):
    landing = Path(cli_env["BATCHINFER_LANDING_URI"])
    _empty_day(landing)
    config = {"resources": {"landing_zone": {"config": {"uri": str(landing), "allow_empty_days": True}}}}

    run = _materialize_cli(cli_env, "raw_transactions", config=config)

    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    raw = PartitionedParquetStore(_storage(cli_env)).read_partition("raw_transactions", DAY)
    assert raw.num_rows == 0 and "transaction_id" in raw.column_names


def test_every_row_level_reason_is_quarantined_and_too_many_block_the_day(cli_env):
    # 100 rows per breakage, three of them broken: 3% of the day, over the 1% limit.
    frame = _good_day(100 * len(ROW_LEVEL_BREAKAGES))
    for i, (corrupt, _) in enumerate(ROW_LEVEL_BREAKAGES.values()):
        corrupt(frame, [100 * i + 50, 100 * i + 52, 100 * i + 60])
    frame["amount"] = frame["amount"].astype("float64")
    land(Path(cli_env["BATCHINFER_LANDING_URI"]), frame)

    run = _materialize_cli(cli_env, *UPSTREAM, "input_snapshot")

    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "invalid_share_within_limit" in output
    store = PartitionedParquetStore(_storage(cli_env))
    quarantined = store.read_partition("quarantined_transactions", DAY).to_pandas()
    counts = quarantined["reason"].value_counts().to_dict()
    # Three rows per breakage; two breakages may share a reason (a lower-case and a newline-suffixed currency).
    expected = Counter(reason for _, reason in ROW_LEVEL_BREAKAGES.values())
    assert counts == {reason: 3 * n for reason, n in expected.items()}
    assert not store.has_partition("input_snapshot", DAY)


_KILL_MID_WRITE = textwrap.dedent(
    """
    import builtins, os, sys, time
    import dagster as dg
    from batchinfer_assets.definitions import build_definitions, build_resources
    from batchinfer_assets.lib import parquet_store
    from batchinfer_assets.settings import Settings

    class StallAfterFirstChunk:
        \"""A predictions file that gets its magic bytes and first chunk on disk, then never its footer.\"""

        def __init__(self, path):
            self._file = builtins.open(path, "wb")
            self._path = path
            self._writes = 0

        def write(self, data):
            written = self._file.write(data)
            self._writes += 1
            if self._writes == 2:
                self._file.flush()
                os.fsync(self._file.fileno())
                print("HALF-WRITTEN", self._path, flush=True)
                time.sleep(600)
            return written

        def __getattr__(self, name):
            return getattr(self._file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._file.close()

    def open_stalling_on_predictions(path, mode="r", *args, **kwargs):
        if "w" in mode and os.sep + "predictions" + os.sep in str(path):
            return StallAfterFirstChunk(path)
        return builtins.open(path, mode, *args, **kwargs)

    # Test-only stall, installed in this child process only: shadows `open` inside the storage module,
    # whichever of its write paths the predictions take. Production code has no hook for it.
    parquet_store.open = open_stalling_on_predictions
    settings = Settings.from_env()
    defs = build_definitions(settings)
    dg.materialize(
        [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.SourceAsset))],
        resources=build_resources(settings),
        partition_key=sys.argv[1],
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model"),
    )
    print("FINISHED WITHOUT STALLING", flush=True)
    """
)


def test_a_run_killed_mid_write_leaves_the_days_last_good_files_intact(tmp_path, demo_model_store):
    landing = tmp_path / "landing"
    settings = dataclasses.replace(
        demo_model_store,
        home=tmp_path,
        storage_uri=str(tmp_path / "storage"),
        landing_uri=str(landing),
        predictions_db_url=f"sqlite:///{tmp_path / 'predictions.db'}",
    )
    land(landing, _good_day(800))
    defs = build_definitions(settings)
    assets = [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.SourceAsset))]
    selection = dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")
    assert dg.materialize(assets, resources=build_resources(settings), partition_key=DAY, selection=selection).success
    table_dir = Path(settings.storage_uri) / "predictions"
    day_dir = table_dir / f"dt={DAY}"
    before = {p.name: p.read_bytes() for p in day_dir.iterdir()}
    readable_before = ds.dataset(table_dir, format="parquet", partitioning="hive").to_table()

    land(landing, _good_day(1200))
    env = {
        **os.environ,
        "BATCHINFER_HOME": str(tmp_path),
        "BATCHINFER_STORAGE_URI": settings.storage_uri,
        "BATCHINFER_LANDING_URI": str(landing),
        "BATCHINFER_PREDICTIONS_DB_URL": settings.predictions_db_url,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _KILL_MID_WRITE, DAY], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline and not line.startswith(("HALF-WRITTEN", "FINISHED")):
            line = child.stdout.readline()
            if not line and child.poll() is not None:
                break
        assert line.startswith("HALF-WRITTEN"), f"the run never reached the predictions write: {line!r}"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        child.stdout.close()

    partial = Path(line.split(maxsplit=1)[1].strip())
    assert partial.exists() and STAGING_DIR in partial.parts
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(partial)
    assert {p.name: p.read_bytes() for p in day_dir.iterdir()} == before
    readable_after = ds.dataset(table_dir, format="parquet", partitioning="hive").to_table()
    assert readable_after.equals(readable_before)
    upstream = PartitionedParquetStore(settings.storage_uri).read_partition("raw_transactions", DAY)
    assert upstream.num_rows == 1200, "the killed run got as far as replacing its upstream days"


@pytest.mark.parametrize(
    ("selection", "materialized"),
    [
        ("*predictions", {"raw_transactions", "transaction_features", "input_snapshot", "predictions"}),
        ("transaction_features", {"transaction_features"}),
    ],
)
def test_a_selection_of_part_of_the_pipeline_runs_through_the_cli(cli_env, selection, materialized):
    """What users type first: an asset with everything upstream, or one asset of the multi-asset alone."""
    land(Path(cli_env["BATCHINFER_LANDING_URI"]), _good_day(300))
    if selection == "transaction_features":
        assert _materialize_cli(cli_env, "raw_transactions").returncode == 0

    run = _materialize_cli(cli_env, selection)

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "DagsterInvalidSubsetError" not in output
    assert set(re.findall(r"Materialized value (\w+)", output)) == materialized
