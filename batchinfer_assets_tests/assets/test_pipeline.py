"""The contract's assets end to end against real small resources in tmp_path."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.domains.card_transactions.features import CALENDAR_FEATURES, FEATURE_COLUMNS
from batchinfer_assets.lib.drift import DRIFT_COLUMNS
from batchinfer_assets.lib.hashing import table_content_hash
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.settings import Settings
from batchinfer_assets_tests.support import check_verdicts, materializations

DAILY_TABLES = ("raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot", "predictions", "drift_metrics")


@pytest.fixture
def settings(pipeline_settings: Settings) -> Settings:
    return pipeline_settings


def _assets(settings: Settings):
    defs = build_definitions(settings)
    return [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)] + [
        a for a in defs.assets if isinstance(a, dg.SourceAsset)
    ]


def _materialize(settings: Settings, *, partition_key: str | None = None, days: tuple[str, str] | None = None):
    tags = {}
    if days is not None:
        tags = {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[1]}
    result = dg.materialize(
        _assets(settings),
        resources=build_resources(settings),
        partition_key=partition_key,
        tags=tags,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model"),
    )
    assert result.success
    return result


def _days(start: str, n: int) -> list[str]:
    first = dt.date.fromisoformat(start)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(n)]


def _db_rows(settings: Settings) -> pd.DataFrame:
    with sa.create_engine(settings.predictions_db_url).connect() as conn:
        return pd.read_sql("select * from predictions order by dt, transaction_id", conn)


def test_one_day_end_to_end(settings):
    result = _materialize(settings, partition_key="2025-01-03")
    store = PartitionedParquetStore(settings.storage_uri)

    for table in DAILY_TABLES:
        assert list((Path(settings.storage_uri) / table / "dt=2025-01-03").glob("*.parquet")), table
    raw = store.read_partition("raw_transactions", "2025-01-03").to_pandas()
    snapshot = store.read_partition("input_snapshot", "2025-01-03").to_pandas()
    preds = store.read_partition("predictions", "2025-01-03").to_pandas()
    drift = store.read_partition("drift_metrics", "2025-01-03").to_pandas()

    assert len(raw) == settings.rows_per_day
    assert list(snapshot.columns) == ["transaction_id", *FEATURE_COLUMNS]
    assert list(preds.columns) == ["transaction_id", "score", "label", "model_name", "model_version"]
    assert preds["transaction_id"].tolist() == snapshot["transaction_id"].tolist()
    assert preds["score"].between(0, 1).all()
    assert (preds["label"] == (preds["score"] >= 0.5)).all()
    assert set(preds["model_name"]) == {"fraud-detector"} and set(preds["model_version"]) == {"1"}
    assert list(drift.columns)[: len(DRIFT_COLUMNS)] == list(DRIFT_COLUMNS)
    assert set(drift["feature"]) == {*FEATURE_COLUMNS, "score"} - set(CALENDAR_FEATURES)
    assert set(drift["reference"]) == {"training"}

    published = _db_rows(settings)
    assert len(published) == len(preds) and set(published["dt"]) == {"2025-01-03"}

    meta = materializations(result, "predictions")["2025-01-03"].metadata
    for key in ("model_uri", "model_version", "input_snapshot_hash", "row_count", "rows_per_second", "device", "batch_size"):
        assert key in meta, key
    assert meta["model_version"].value == "1"
    assert meta["row_count"].value == len(preds)
    # The Plots tab draws every number sorted by key: the day's figures, not the pool's flat ones, come first.
    numbers = sorted(k for k, v in meta.items() if isinstance(v, (dg.IntMetadataValue, dg.FloatMetadataValue)))
    assert numbers == ["batch_size", "positive_rate", "row_count", "rows_per_second", "threshold", "torch_threads"]
    assert meta["engine_details"].value == {
        "actors": 1,
        "rows_per_second_per_actor": meta["rows_per_second"].value,
        "batch_size_backoffs": 0,
    }
    snapshot_meta = materializations(result, "input_snapshot")["2025-01-03"].metadata
    assert meta["input_snapshot_hash"].value == snapshot_meta["content_hash"].value


def test_week_as_one_range_equals_day_by_day(settings, tmp_path):
    days = _days("2025-01-06", 7)
    ranged = settings
    daily = dataclasses.replace(
        settings, storage_uri=str(tmp_path / "daily"), predictions_db_url=f"sqlite:///{tmp_path / 'daily.db'}"
    )
    result = _materialize(ranged, days=(days[0], days[-1]))
    for day in days:
        _materialize(daily, partition_key=day)

    _assert_each_day_carries_its_own_figures(result, ranged_store := PartitionedParquetStore(ranged.storage_uri), days)
    daily_store = PartitionedParquetStore(daily.storage_uri)
    for table in DAILY_TABLES:
        for day in days:
            assert ranged_store.read_partition(table, day).equals(daily_store.read_partition(table, day)), (table, day)
    pd.testing.assert_frame_equal(_db_rows(ranged), _db_rows(daily))
    assert sorted(set(_db_rows(ranged)["dt"])) == days


def test_rerun_of_a_day_is_byte_identical_and_never_duplicates(settings):
    _materialize(settings, partition_key="2025-02-10")
    folder = Path(settings.storage_uri) / "predictions" / "dt=2025-02-10"
    first = {p.name: p.read_bytes() for p in folder.glob("*.parquet")}
    rows_before = _db_rows(settings)

    _materialize(settings, partition_key="2025-02-10")

    assert {p.name: p.read_bytes() for p in folder.glob("*.parquet")} == first
    rows_after = _db_rows(settings)
    assert len(rows_after) == len(rows_before) == rows_after["transaction_id"].nunique()
    # The same rows, now linked to the scoring run that wrote them last (the lineage log keeps both runs).
    assert rows_before["scoring_run_id"].nunique() == rows_after["scoring_run_id"].nunique() == 1
    assert rows_after["scoring_run_id"].iloc[0] != rows_before["scoring_run_id"].iloc[0]
    pd.testing.assert_frame_equal(rows_before.drop(columns="scoring_run_id"), rows_after.drop(columns="scoring_run_id"))


def _assert_each_day_carries_its_own_figures(result, store: PartitionedParquetStore, days: list[str]) -> None:
    """A single-run range materializes every day with that day's row count and input hash, not the range's."""
    by_asset = {}
    versions = {}
    for node in ("raw_transactions", "input_snapshot", "predictions", "drift_metrics", "published_predictions"):
        events = materializations(result, node)
        by_asset[node] = {day: e.metadata for day, e in events.items()}
        versions[node] = {day: e.tags["dagster/data_version"] for day, e in events.items()}
        assert sorted(by_asset[node]) == days, node
    # Each day's data version is its own: the snapshot's is its content hash.
    for node, by_day in versions.items():
        assert len(set(by_day.values())) == len(days), node
    for check in ("invalid_share_within_limit", "matches_model_signature", "drift_check"):
        assert sorted(check_verdicts(result, check)) == days, check
    for day in days:
        snapshot = store.read_partition("input_snapshot", day)
        predictions = store.read_partition("predictions", day)
        assert by_asset["raw_transactions"][day]["row_count"].value == store.read_partition("raw_transactions", day).num_rows
        assert by_asset["input_snapshot"][day]["row_count"].value == snapshot.num_rows
        assert by_asset["input_snapshot"][day]["content_hash"].value == table_content_hash(snapshot)
        assert versions["input_snapshot"][day] == table_content_hash(snapshot)
        assert by_asset["predictions"][day]["row_count"].value == predictions.num_rows
        assert by_asset["predictions"][day]["input_snapshot_hash"].value == table_content_hash(snapshot)
        assert by_asset["published_predictions"][day]["row_count"].value == predictions.num_rows
        assert by_asset["drift_metrics"][day]["row_count"].value == store.read_partition("drift_metrics", day).num_rows
    assert len({by_asset["input_snapshot"][d]["content_hash"].value for d in days}) == len(days)


def test_summary_reports_what_landed_and_names_missing_days(settings):
    from batchinfer_assets.summary import summarize

    _materialize(settings, partition_key="2025-02-20")
    store = PartitionedParquetStore(settings.storage_uri)
    preds = store.read_partition("predictions", "2025-02-20").to_pandas()

    table = summarize(settings, dt.date(2025, 2, 20), dt.date(2025, 2, 21)).set_index("dt")
    day = table.loc["2025-02-20"]
    assert day["predictions"] == len(preds) == day["published_rows"]
    assert day["flagged"] == int(preds["label"].sum())
    assert day["model_version"] == "1"
    assert day["quarantined"] == store.read_partition("quarantined_transactions", "2025-02-20").num_rows
    drift = store.read_partition("drift_metrics", "2025-02-20").to_pandas()
    training = drift[(drift["reference"] == "training") & (drift["feature"] != "score") & drift["threshold"].notna()]
    assert day["drifted_vs_training"] == f"{int(training['drifted'].sum())}/{len(training)}"
    assert day["drifted_vs_trailing_7d"] == "-", "the first day has no earlier days to compare with"
    assert day["score_drifted"] == bool(drift.loc[drift["feature"] == "score", "drifted"].any())
    assert table.loc["2025-02-21", "status"].startswith("missing: no partition dt=2025-02-21")
