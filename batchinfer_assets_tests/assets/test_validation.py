"""The validation gate through the real assets: row-level quarantine, blocking, the model-signature check, NaN guard."""

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
from hypothesis import HealthCheck, given, settings as hypothesis_settings
from hypothesis import strategies as st

from batchinfer_assets.assets.input_snapshot import signature_mismatches
from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.domains.card_transactions.features import FEATURE_COLUMNS, build_features
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.domains.card_transactions.synthetic import generate_day
from batchinfer_assets.resources.landing_zone import ParquetLandingZoneResource
from batchinfer_assets.schemas import REASON_COLUMN, feature_schema, split_valid_rows
from batchinfer_assets.settings import Settings
from batchinfer_assets.tables import INVALID_SHARE_CHECK, SIGNATURE_CHECK
from batchinfer_assets_tests.support import check_verdicts, materialized_days
from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.resources.prediction_db import published_text_lengths

CARD_LENGTHS = published_text_lengths(CARD)

DAY = "2025-01-03"
ROWS = 1000
UPSTREAM = ("raw_transactions", "transaction_features", "quarantined_transactions")
WITHOUT_MODEL = dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")


def land(root: Path, frame: pd.DataFrame, day: str = DAY, name: str = "part-0.parquet") -> Path:
    """Write `frame` as a real Parquet file into the landing zone's folder of `day`."""
    folder = root / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / name)
    return folder


def _set(column: str, value):
    def corrupt(frame: pd.DataFrame, rows: list[int]) -> None:
        frame[column] = frame[column].astype(object)
        frame.loc[rows, column] = value

    return corrupt


def _duplicate_earlier_ids(frame: pd.DataFrame, rows: list[int]) -> None:
    frame.loc[rows, "transaction_id"] = frame.loc[[r - 1 for r in rows], "transaction_id"].to_numpy()


def _blank_ids(frame: pd.DataFrame, rows: list[int]) -> None:
    # Each a different blank (empty, spaces, a full-width space), so none is also a duplicate.
    frame.loc[rows, "transaction_id"] = ["", "   ", "\u3000"][: len(rows)]


def _outside_the_day(frame: pd.DataFrame, rows: list[int]) -> None:
    frame.loc[rows, "event_time"] = frame.loc[rows, "event_time"] + pd.Timedelta(days=1)


ROW_LEVEL_BREAKAGES = {
    "null transaction_id": (_set("transaction_id", None), "transaction_id: not_null"),
    "null customer_id": (_set("customer_id", None), "customer_id: not_null"),
    "null amount": (_set("amount", None), "amount: not_null"),
    "negative amount": (_set("amount", -3.5), "amount: greater_than_or_equal_to(0)"),
    "unknown channel": (_set("channel", "telepathy"), "channel: isin(['pos', 'online', 'atm'])"),
    "malformed currency": (_set("currency", "usd"), "currency: str_fullmatch('[A-Z]{3}')"),
    "malformed country": (_set("country", "USA"), "country: str_fullmatch('[A-Z]{2}')"),
    "currency with a final newline": (_set("currency", "USD\n"), "currency: str_fullmatch('[A-Z]{3}')"),
    "blank transaction_id": (_blank_ids, "transaction_id: not_blank"),
    "NUL in customer_id": (_set("customer_id", "C\x000001"), "customer_id: no_control_characters"),
    "merchant_category longer than the database holds": (_set("merchant_category", "m" * 65), "merchant_category: max_length(64)"),
    "timestamp outside the day": (_outside_the_day, f"event_time: within_day({DAY})"),
    "duplicate transaction_id": (_duplicate_earlier_ids, "transaction_id: unique"),
}


def corrupted_day(breakage: str, n_bad: int, rows: int = ROWS, day: str = DAY) -> tuple[pd.DataFrame, list[int]]:
    """A good synthetic day with `n_bad` evenly spread rows broken the named way."""
    frame = generate_day(dt.date.fromisoformat(day), rows)
    bad = list(range(rows // (n_bad + 1), rows, rows // (n_bad + 1)))[:n_bad]
    corrupt, _ = ROW_LEVEL_BREAKAGES[breakage]
    corrupt(frame, bad)
    if breakage == "null amount":
        frame["amount"] = frame["amount"].astype("float64")
    return frame, bad


@pytest.fixture
def settings(tmp_path: Path, demo_model_store: Settings) -> Settings:
    """A landing zone and fresh storage per test, sharing the session's registered demo model."""
    (tmp_path / "landing").mkdir()
    return dataclasses.replace(
        demo_model_store,
        home=tmp_path,
        storage_uri=str(tmp_path / "storage"),
        landing_uri=str(tmp_path / "landing"),
        predictions_db_url=f"sqlite:///{tmp_path / 'predictions.db'}",
    )


def materialize(settings: Settings, selection=WITHOUT_MODEL, *, partition_key: str | None = DAY, tags=None, **resources):
    defs = build_definitions(settings)
    return dg.materialize(
        [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.SourceAsset))],
        resources={**build_resources(settings), **resources},
        partition_key=partition_key,
        tags=tags or {},
        selection=selection,
        raise_on_error=False,
    )


def _table(settings: Settings, table: str, day: str = DAY) -> pd.DataFrame:
    return PartitionedParquetStore(settings.storage_uri).read_partition(table, day).to_pandas()


def _check(result, check_name: str) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == check_name]
    return evaluation


@pytest.mark.parametrize("breakage", list(ROW_LEVEL_BREAKAGES))
def test_each_row_level_breakage_is_quarantined_with_its_reason(settings, breakage):
    frame, bad = corrupted_day(breakage, n_bad=3)
    land(Path(settings.landing_uri), frame)

    result = materialize(settings, dg.AssetSelection.assets(*UPSTREAM))

    assert result.success
    reason = ROW_LEVEL_BREAKAGES[breakage][1]
    quarantined = _table(settings, "quarantined_transactions")
    assert quarantined[REASON_COLUMN].tolist() == [reason] * 3
    assert quarantined["event_time"].tolist() == pd.to_datetime(frame.loc[bad, "event_time"], utc=True).tolist()
    features = _table(settings, "transaction_features")
    assert len(features) == ROWS - 3
    if breakage not in ("null transaction_id", "duplicate transaction_id"):
        assert not set(features["transaction_id"]) & set(frame.loc[bad, "transaction_id"])
    meta = {e.materialization.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert meta["quarantined_transactions"]["reasons"].value == {reason: 3}
    check = _check(result, INVALID_SHARE_CHECK)
    assert check.passed and check.metadata["day"].value == DAY
    assert check.metadata["reasons"].value == {reason: 3}


def test_half_a_percent_bad_rows_is_scored_without_them(settings):
    frame, bad = corrupted_day("negative amount", n_bad=5)
    land(Path(settings.landing_uri), frame)

    result = materialize(settings)

    assert result.success
    predictions = _table(settings, "predictions")
    expected = frame.drop(index=bad)["transaction_id"].tolist()
    assert predictions["transaction_id"].tolist() == expected
    # Published rows carry each transaction's own business columns (looked up past the quarantined rows).
    with sa.create_engine(settings.predictions_db_url).connect() as conn:
        published = pd.read_sql("select transaction_id, customer_id, amount, merchant_category from predictions", conn)
    landed = frame.drop(index=bad).set_index("transaction_id")
    published = published.set_index("transaction_id").loc[landed.index]
    assert published["customer_id"].tolist() == landed["customer_id"].tolist()
    assert published["merchant_category"].tolist() == landed["merchant_category"].tolist()
    np.testing.assert_allclose(published["amount"].to_numpy(), landed["amount"].to_numpy(dtype=float))
    check = _check(result, INVALID_SHARE_CHECK)
    assert check.passed and check.metadata["invalid_fraction"].value == pytest.approx(0.005)
    assert _check(result, SIGNATURE_CHECK).passed


def test_two_percent_bad_rows_blocks_the_day_and_keeps_its_previous_predictions(settings):
    landing = Path(settings.landing_uri)
    land(landing, generate_day(dt.date.fromisoformat(DAY), ROWS))
    assert materialize(settings).success
    folder = Path(settings.storage_uri) / "predictions" / f"dt={DAY}"
    before = {p.name: p.read_bytes() for p in folder.glob("*.parquet")}
    with sa.create_engine(settings.predictions_db_url).connect() as conn:
        published_before = pd.read_sql("select * from predictions order by transaction_id", conn)

    frame, bad = corrupted_day("unknown channel", n_bad=20)
    land(landing, frame)
    result = materialize(settings)

    assert not result.success
    check = _check(result, INVALID_SHARE_CHECK)
    assert not check.passed and check.metadata["day"].value == DAY
    assert check.metadata["quarantined_rows"].value == 20
    assert check.metadata["reasons"].value == {"channel: isin(['pos', 'online', 'atm'])": 20}
    assert "telepathy" in check.metadata["sample_failing_rows"].value
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == set(UPSTREAM)
    assert {p.name: p.read_bytes() for p in folder.glob("*.parquet")} == before
    with sa.create_engine(settings.predictions_db_url).connect() as conn:
        published_after = pd.read_sql("select * from predictions order by transaction_id", conn)
    pd.testing.assert_frame_equal(published_before, published_after)


def test_a_housekeeping_failure_at_the_end_of_a_run_never_replaces_its_stopped_days(settings):
    """Pruning the snapshot archive runs after the days; its failure is a warning, the run's outcome stays the days'."""
    landing = Path(settings.landing_uri)
    land(landing, generate_day(dt.date(2025, 1, 3), 400), day="2025-01-03")
    assert materialize(settings).success
    # A prediction database another tool wrote to: a scoring run's snapshot hash is a BLOB, not text, so the
    # archive cannot tell which snapshots are in use.
    engine = sa.create_engine(settings.predictions_db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE scoring_runs SET input_snapshot_hash = X'00ff' WHERE dt = '2025-01-03'"))
    engine.dispose()
    land(landing, generate_day(dt.date(2025, 1, 4), 400), day="2025-01-04")
    land(landing, corrupted_day("malformed country", n_bad=8, rows=400, day="2025-01-05")[0], day="2025-01-05")
    tags = {"dagster/asset_partition_range_start": "2025-01-04", "dagster/asset_partition_range_end": "2025-01-05"}

    result = materialize(settings, partition_key=None, tags=tags)

    assert not result.success
    assert materialized_days(result, "published_predictions") == ["2025-01-04"]
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "1 of 2 day(s) stopped" in message and "2025-01-05: invalid_share_within_limit: 8 of 400 rows" in message
    archived = PartitionedParquetStore(settings.storage_uri).keyed_by("sha256").list_partitions("input_snapshot_archive")
    assert len(archived) == 2, "both scored inputs stay archived"


def test_a_bad_day_in_a_range_is_blocked_alone_and_stays_blocked_whatever_is_selected(settings):
    landing = Path(settings.landing_uri)
    land(landing, generate_day(dt.date(2025, 1, 3), 400), day="2025-01-03")
    frame, _ = corrupted_day("malformed country", n_bad=8, rows=400, day="2025-01-04")
    land(landing, frame, day="2025-01-04")
    land(landing, generate_day(dt.date(2025, 1, 5), 400), day="2025-01-05")
    tags = {"dagster/asset_partition_range_start": "2025-01-03", "dagster/asset_partition_range_end": "2025-01-05"}

    result = materialize(settings, partition_key=None, tags=tags)

    # Each day ends with its own verdict on its own partition; the bad day stops, the good days go on.
    assert check_verdicts(result, INVALID_SHARE_CHECK) == {"2025-01-03": True, "2025-01-04": False, "2025-01-05": True}
    assert check_verdicts(result, SIGNATURE_CHECK) == {"2025-01-03": True, "2025-01-05": True}
    assert materialized_days(result, "transaction_features") == ["2025-01-03", "2025-01-04", "2025-01-05"]
    for asset in ("input_snapshot", "predictions", "drift_metrics", "published_predictions"):
        assert materialized_days(result, asset) == ["2025-01-03", "2025-01-05"], asset
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "1 of 3 day(s) stopped" in message and "2025-01-04: invalid_share_within_limit: 8 of 400 rows (2.000%)" in message
    store = PartitionedParquetStore(settings.storage_uri)
    assert not store.has_partition("predictions", "2025-01-04")
    with sa.create_engine(settings.predictions_db_url).connect() as conn:
        days = [r[0] for r in conn.execute(sa.text("select distinct dt from predictions order by dt"))]
    assert days == ["2025-01-03", "2025-01-05"]

    # Selecting only what follows the gate does not bypass it: the stored features still fail the limit.
    later = materialize(settings, dg.AssetSelection.assets("input_snapshot", "predictions", "published_predictions"), partition_key="2025-01-04")
    assert not later.success and materialized_days(later, "input_snapshot") == []
    (failure,) = [e for e in later.all_events if e.is_step_failure]
    assert "8 (2.000%) were quarantined, over the 1.00% limit" in failure.step_failure_data.error.message
    assert not store.has_partition("input_snapshot", "2025-01-04")


def test_a_model_whose_signature_needs_other_columns_blocks_scoring(settings, tiny_model_store):
    land(Path(settings.landing_uri), generate_day(dt.date.fromisoformat(DAY), 300))
    tiny = dataclasses.replace(
        settings, tracking_uri=tiny_model_store.tracking_uri, model_uri="models:/tiny-pickle@champion"
    )

    result = materialize(tiny)

    check = _check(result, SIGNATURE_CHECK)
    assert not check.passed and check.metadata["day"].value == DAY
    assert "amount_z: required by the model, missing from the snapshot" in check.metadata["problems"].value
    assert "predictions" not in {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


@pytest.mark.parametrize(
    ("types", "dtypes", "problem"),
    [
        pytest.param({"a": "float"}, {"a": "float32"}, None, id="float32 fits float"),
        pytest.param({"a": "double"}, {"a": "float32"}, None, id="float32 widens to double"),
        pytest.param({}, {"a": "float32"}, None, id="tensor signature: no column types"),
        pytest.param({"a": "long"}, {"a": "float32"}, "a: the signature expects long, the snapshot holds float32", id="integer"),
        pytest.param({"a": "string"}, {"a": "float32"}, "a: the signature expects string, the snapshot holds float32", id="text"),
        pytest.param({"a": "float"}, {"a": "float64"}, "a: snapshot dtype float64, the scorer feeds float32", id="float64"),
        pytest.param({"a": "float"}, {"b": "float32"}, "a: required by the model, missing from the snapshot", id="missing"),
    ],
)
def test_signature_mismatches_name_the_column_and_types(types, dtypes, problem):
    assert signature_mismatches(("a",), types, dtypes) == ([problem] if problem else [])


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_features_never_reach_the_snapshot(settings, poison):
    store = PartitionedParquetStore(settings.storage_uri)
    features = build_features(generate_day(dt.date.fromisoformat(DAY), 200))
    good_snapshot = features.loc[:, ["transaction_id", *FEATURE_COLUMNS]]
    store.write_partition("input_snapshot", DAY, pa.Table.from_pandas(good_snapshot, preserve_index=False))
    before = {p.name: p.read_bytes() for p in store.partition_files("input_snapshot", DAY)}
    features.loc[7, "hour_sin"] = np.float32(poison)
    store.write_partition("transaction_features", DAY, pa.Table.from_pandas(features, preserve_index=False))

    result = materialize(settings, dg.AssetSelection.assets("input_snapshot", "predictions"))

    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert f"{DAY}: input_snapshot: features fail validation" in message and "hour_sin" in message
    assert {p.name: p.read_bytes() for p in store.partition_files("input_snapshot", DAY)} == before
    assert not store.has_partition("predictions", DAY)


CELL_CORRUPTIONS = {
    "null id": ("transaction_id", None),
    "null customer": ("customer_id", None),
    "null merchant": ("merchant_category", None),
    "null amount": ("amount", None),
    "negative amount": ("amount", -1.0),
    "infinite amount": ("amount", float("inf")),
    "bad channel": ("channel", "web"),
    "lower currency": ("currency", "eur"),
    "long country": ("country", "DEU"),
    "null time": ("event_time", None),
    "time before the day": ("event_time", pd.Timestamp("2025-01-02T23:59:59Z")),
    "time after the day": ("event_time", pd.Timestamp("2025-01-04T00:00:00Z")),
}
COLUMN_CORRUPTIONS = {
    "drop channel": ("required column(s) missing: channel", lambda f: f.drop(columns=["channel"])),
    "amount as text": ("column 'amount'", lambda f: f.assign(amount=f["amount"].astype(str))),
    "time as numbers": ("column 'event_time'", lambda f: f.assign(event_time=np.arange(len(f)))),
    "country as numbers": ("column 'country'", lambda f: f.assign(country=np.arange(len(f)))),
}
_GOOD = generate_day(dt.date.fromisoformat(DAY), 60)


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cells=st.lists(st.tuples(st.integers(1, 59), st.sampled_from(sorted(CELL_CORRUPTIONS) + ["duplicate id"])), max_size=12),
    column=st.none() | st.sampled_from(sorted(COLUMN_CORRUPTIONS)),
)
def test_random_corruptions_are_quarantined_or_rejected_never_scored(tmp_path_factory, cells, column):
    frame = _GOOD.copy().astype(object)
    broken = sorted({row for row, _ in cells})
    for row, corruption in cells:
        if corruption != "duplicate id":
            name, value = CELL_CORRUPTIONS[corruption]
            frame.loc[row, name] = value
    # Copied last and in row order, so each copy duplicates an id that is still present earlier.
    for row in sorted(row for row, corruption in cells if corruption == "duplicate id"):
        frame.loc[row, "transaction_id"] = frame.loc[row - 1, "transaction_id"]
    frame = frame.astype({"event_time": "datetime64[us, UTC]", "amount": "float64"})
    if column is not None:
        frame = COLUMN_CORRUPTIONS[column][1](frame)
    root = tmp_path_factory.mktemp("landing")
    land(root, frame)

    try:
        landed = ParquetLandingZoneResource(uri=str(root)).load_day(dt.date.fromisoformat(DAY), CARD)
    except LandingDataError as rejected:
        assert column is not None and COLUMN_CORRUPTIONS[column][0] in str(rejected)
        return
    assert column is None
    valid, quarantined = split_valid_rows(landed, dt.date.fromisoformat(DAY), CARD, CARD_LENGTHS)

    clean = _GOOD.drop(index=broken)
    assert valid["transaction_id"].tolist() == clean["transaction_id"].tolist()
    assert len(quarantined) == len(broken)
    feature_schema(FEATURE_COLUMNS, "transaction_id").validate(build_features(valid), lazy=True)


def test_each_check_has_one_current_verdict_naming_its_day_and_counting_the_failing_days(settings):
    """Every summary the UI draws reads the check's latest verdict: one per run, for its newest day, the failing days listed."""
    landing = Path(settings.landing_uri)
    land(landing, generate_day(dt.date(2025, 1, 3), 400), day="2025-01-03")
    land(landing, corrupted_day("malformed country", n_bad=8, rows=400, day="2025-01-04")[0], day="2025-01-04")
    land(landing, generate_day(dt.date(2025, 1, 5), 400), day="2025-01-05")
    defs = build_definitions(settings)
    key = dg.AssetCheckKey(dg.AssetKey("transaction_features"), INVALID_SHARE_CHECK)

    def run(**kwargs):
        return dg.materialize(
            list(defs.assets), resources=build_resources(settings), instance=instance, selection=WITHOUT_MODEL,
            raise_on_error=False, **kwargs,
        )

    with dg.instance_for_test() as instance:
        run(tags={"dagster/asset_partition_range_start": "2025-01-03", "dagster/asset_partition_range_end": "2025-01-05"})
        # One execution a day, each resolved by its own verdict; the latest is the newest day's.
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
        assert [(r.partition, r.status.value) for r in history] == [
            ("2025-01-05", "SUCCEEDED"), ("2025-01-04", "FAILED"), ("2025-01-03", "SUCCEEDED")
        ]
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        assert record.partition == "2025-01-05" and record.status.value == "SUCCEEDED"
        assert record.evaluation.metadata["day"].value == "2025-01-05"
        assert record.evaluation.metadata["failing_days"].value == ["2025-01-04"]
        assert record.evaluation.description.startswith("2025-01-05: ")
        assert record.evaluation.description.endswith("(failing in the last 30 days: 2025-01-04)")

        # The bad day re-landed and re-run alone: nothing fails any more.
        land(landing, generate_day(dt.date(2025, 1, 4), 400), day="2025-01-04")
        assert run(partition_key="2025-01-04").success
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        assert latest.status.value == "SUCCEEDED" and latest.evaluation.metadata["failing_days"].value == []
