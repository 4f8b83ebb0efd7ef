"""A stage never combines stored inputs of two versions of a day: after a re-landing, every selection refuses until re-run."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.domains.card_transactions.synthetic import generate_day
from batchinfer_assets.settings import Settings
from batchinfer_assets.tables import INVALID_SHARE_CHECK

DAY = "2025-01-03"
ROWS = 1000
WITHOUT_MODEL = dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")


@pytest.fixture
def settings(tmp_path: Path, demo_model_store: Settings) -> Settings:
    (tmp_path / "landing").mkdir()
    return dataclasses.replace(
        demo_model_store,
        home=tmp_path,
        storage_uri=str(tmp_path / "storage"),
        landing_uri=str(tmp_path / "landing"),
        predictions_db_url=f"sqlite:///{tmp_path / 'predictions.db'}",
    )


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def land(settings: Settings, frame: pd.DataFrame) -> None:
    """Replace the day's landing files with `frame` (a re-landing)."""
    folder = Path(settings.landing_uri) / f"dt={DAY}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-0.parquet")


def run(settings: Settings, instance: dg.DagsterInstance, selection=WITHOUT_MODEL) -> dg.ExecuteInProcessResult:
    defs = build_definitions(settings)
    return dg.materialize(
        [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.SourceAsset))],
        resources=build_resources(settings),
        partition_key=DAY,
        selection=selection,
        instance=instance,
        raise_on_error=False,
    )


def published(settings: Settings) -> pd.DataFrame:
    with sa.create_engine(settings.predictions_db_url).connect() as conn:
        return pd.read_sql("select * from predictions order by transaction_id", conn)


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.message


def written(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def relanded(frame: pd.DataFrame, bad_share: float = 0.0) -> pd.DataFrame:
    """The same transactions with ten times the amounts, and `bad_share` of them without a customer."""
    frame = frame.assign(amount=frame["amount"] * 10)
    bad = int(len(frame) * bad_share)
    if bad:
        frame["customer_id"] = frame["customer_id"].astype(object)
        frame.loc[frame.index[:bad], "customer_id"] = None
    return frame


def test_a_day_relanded_bad_is_never_republished_whatever_is_selected(settings, instance):
    original = generate_day(dt.date.fromisoformat(DAY), ROWS)
    land(settings, original)
    assert run(settings, instance).success
    before = published(settings)
    assert len(before) == ROWS

    # Re-landed with 5% bad rows and other amounts: the full run rightly stops at the gate.
    land(settings, relanded(original, bad_share=0.05))
    full = run(settings, instance)
    assert not full.success
    assert [e.passed for e in full.get_asset_check_evaluations() if e.check_name == INVALID_SHARE_CHECK] == [False]

    # The republish command and every later selection refuse: the stored predictions are the old day's.
    for selection in (["published_predictions"], ["input_snapshot", "predictions", "drift_metrics", "published_predictions"], ["drift_metrics"]):
        later = run(settings, instance, dg.AssetSelection.assets(*selection))
        assert not later.success, selection
        assert written(later) == set(), selection
        pd.testing.assert_frame_equal(published(settings), before)
    message = failure_message(run(settings, instance, dg.AssetSelection.assets("published_predictions")))
    assert f"predictions for {DAY} was computed from raw_transactions version" in message
    assert "dg launch --assets 'input_snapshot*'" in message

    # Re-running from the stale stage judges the current raw data: still blocked, still nothing published.
    rerun = run(settings, instance, dg.AssetSelection.assets("input_snapshot").downstream())
    assert not rerun.success and "invalid_share_within_limit" in failure_message(rerun)
    pd.testing.assert_frame_equal(published(settings), before)


def test_raw_rerun_alone_makes_later_stages_refuse_until_the_stale_stage_is_rerun(settings, instance):
    original = generate_day(dt.date.fromisoformat(DAY), ROWS)
    land(settings, original)
    assert run(settings, instance).success
    land(settings, relanded(original))
    assert run(settings, instance, dg.AssetSelection.assets("raw_transactions")).success

    refused = run(settings, instance, dg.AssetSelection.assets("published_predictions"))
    assert not refused.success and written(refused) == set()
    message = failure_message(refused)
    assert "dg launch --assets 'transaction_features*'" in message
    assert (published(settings)["amount"].to_numpy() == original.sort_values("transaction_id")["amount"].to_numpy()).all()

    # The quarantine gate's stored re-check refuses the old features as well, naming them.
    snapshot_only = run(settings, instance, dg.AssetSelection.assets("input_snapshot"))
    assert not snapshot_only.success and "transaction_features for" in failure_message(snapshot_only)

    # The command the message names brings every stage onto the new raw data, and publishing works again.
    fixed = run(settings, instance, dg.AssetSelection.assets("transaction_features").downstream())
    assert fixed.success
    rows = published(settings)
    expected = relanded(original).sort_values("transaction_id")
    assert rows["amount"].to_numpy() == pytest.approx(expected["amount"].to_numpy())
    assert rows["model_version"].unique().tolist() == ["1"]


def test_drift_refuses_scores_of_an_older_snapshot_than_the_days_current_one(settings, instance):
    original = generate_day(dt.date.fromisoformat(DAY), ROWS)
    land(settings, original)
    assert run(settings, instance).success
    land(settings, relanded(original))
    upstream = dg.AssetSelection.assets("raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot")
    assert run(settings, instance, upstream).success

    refused = run(settings, instance, dg.AssetSelection.assets("drift_metrics"))
    assert not refused.success and written(refused) == set()
    message = failure_message(refused)
    assert "predictions for 2025-01-03 was computed from raw_transactions version" in message
    assert "dg launch --assets 'predictions*'" in message
