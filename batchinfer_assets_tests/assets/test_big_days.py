"""A day bigger than `day_chunk_rows` goes through every stage in buckets and gives what the whole day in memory gives."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from batchinfer_assets.assets.predictions import stored_content_hash
from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.domain import load_domain
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.settings import Settings

DAY = "2025-01-03"
ROWS = 3_000
# Small enough that the day is split into 6 buckets and the landing file is read in pieces.
SMALL_CHUNK = 500


def _landed_day(root: Path) -> pd.DataFrame:
    """A synthetic day in one landing file, with ids repeated within one customer and across customers."""
    frame = load_domain(None).synthetic.generate_day(dt.date.fromisoformat(DAY), ROWS, 11)
    customers = frame["customer_id"].to_numpy()
    other = next(i for i in range(100, ROWS) if customers[i] != customers[20])
    same = next(i for i in range(200, ROWS) if customers[i] == customers[30])
    # Later rows repeating an earlier id: another customer's (the repeat lands in another bucket, mostly) and the same one's.
    frame.loc[other, "transaction_id"] = frame.loc[20, "transaction_id"]
    frame.loc[same, "transaction_id"] = frame.loc[30, "transaction_id"]
    frame.loc[[50, 51], "amount"] = -1.0
    folder = root / f"dt={DAY}"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-0.parquet")
    return frame


def _run(settings: Settings) -> dg.ExecuteInProcessResult:
    defs = build_definitions(settings)
    assets = [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.SourceAsset))]
    result = dg.materialize(
        assets,
        resources=build_resources(settings),
        partition_key=DAY,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model"),
    )
    assert result.success
    return result


def _table(settings: Settings, name: str) -> pd.DataFrame:
    return PartitionedParquetStore(settings.storage_uri).read_partition(name, DAY).to_pandas()


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("transaction_id", kind="stable").reset_index(drop=True)


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.materialization.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture
def both(tmp_path: Path, demo_model_store: Settings):
    """The same landed day run whole (default day_chunk_rows) and in buckets, each on its own storage and database."""
    landing = tmp_path / "landing"
    frame = _landed_day(landing)
    runs = {}
    for name, chunk in (("whole", 10_000_000), ("buckets", SMALL_CHUNK)):
        home = tmp_path / name
        settings = dataclasses.replace(
            demo_model_store,
            home=home,
            storage_uri=str(home / "storage"),
            landing_uri=str(landing),
            predictions_db_url=f"sqlite:///{home / 'predictions.db'}",
            day_chunk_rows=chunk,
            max_invalid_fraction=0.05,
        )
        runs[name] = (settings, _run(settings))
    return frame, runs


def test_a_day_in_buckets_quarantines_features_snapshots_and_scores_as_the_whole_day(both):
    frame, runs = both
    (whole, whole_result), (split, split_result) = runs["whole"], runs["buckets"]

    # The raw data's content hash does not depend on how the landing file was read, and what was hashed as it
    # streamed is what the files hold.
    assert _metadata(whole_result, "raw_transactions")["content_hash"] == _metadata(split_result, "raw_transactions")["content_hash"]
    for settings, result in runs.values():
        store = PartitionedParquetStore(settings.storage_uri)
        for table in ("raw_transactions", "input_snapshot"):
            assert stored_content_hash(store, table, DAY) == _metadata(result, table)["content_hash"]

    quarantined = {name: _by_id(_table(s, "quarantined_transactions")) for name, (s, _) in runs.items()}
    pd.testing.assert_frame_equal(quarantined["whole"], quarantined["buckets"])
    # Both repeats are caught, the one across buckets too, and the first occurrences stay valid.
    reasons = quarantined["buckets"].groupby("reason").size().to_dict()
    assert reasons == {"transaction_id: unique": 2, "amount: greater_than_or_equal_to(0)": 2}
    first_ids = set(frame.loc[[20, 30], "transaction_id"])
    assert first_ids <= set(_table(split, "transaction_features")["transaction_id"])

    # Written back in the order of the day's rows: the same rows in the same order as the whole day, so the same
    # data versions whatever day_chunk_rows is (a day reproduced with another setting hashes the same).
    for table in ("quarantined_transactions", "transaction_features", "input_snapshot"):
        pd.testing.assert_frame_equal(_table(whole, table), _table(split, table))
    assert _metadata(whole_result, "input_snapshot")["content_hash"] == _metadata(split_result, "input_snapshot")["content_hash"]
    scores = {name: _table(s, "predictions") for name, (s, _) in runs.items()}
    assert len(scores["buckets"]) == ROWS - 4
    np.testing.assert_allclose(scores["whole"]["score"], scores["buckets"]["score"], atol=1e-6)
    assert (scores["whole"]["transaction_id"] == scores["buckets"]["transaction_id"]).all()

    gate = {}
    for name, (_, result) in runs.items():
        [evaluation] = [
            e.event_specific_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == "invalid_share_within_limit"
        ]
        gate[name] = {k: evaluation.metadata[k].value for k in ("rows", "quarantined_rows", "invalid_fraction")}
    assert gate["whole"] == gate["buckets"] == {"rows": ROWS, "quarantined_rows": 4, "invalid_fraction": round(4 / ROWS, 6)}


def test_a_day_in_buckets_publishes_the_same_rows_and_says_drift_was_judged_on_a_sample(both):
    _, runs = both
    published = {}
    for name, (settings, _) in runs.items():
        with sa.create_engine(settings.predictions_db_url).connect() as conn:
            published[name] = pd.read_sql(
                "select transaction_id, dt, label, model_version, customer_id, amount, merchant_category from predictions "
                "order by transaction_id",
                conn,
            )
    assert len(published["buckets"]) == ROWS - 4
    pd.testing.assert_frame_equal(published["whole"], published["buckets"])

    notes = _metadata(runs["buckets"][1], "drift_metrics").get("notes", "")
    assert f"{ROWS - 4:,} rows, over day_chunk_rows={SMALL_CHUNK}" in notes
    assert "over day_chunk_rows" not in _metadata(runs["whole"][1], "drift_metrics").get("notes", "")
    drift = _table(runs["buckets"][0], "drift_metrics")
    current = drift.loc[drift["reference"] == "training", "n_current"]
    # About a sixth of the rows (a hash picks them), never the whole day.
    assert ((current > 300) & (current < 700)).all()
