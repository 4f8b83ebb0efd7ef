"""drift_metrics against real Parquet storage and real MLflow stores: both references, report, check."""

import datetime as dt
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchinfer_assets.tables import DRIFT_CHECK
from batchinfer_assets.lib.drift import DRIFT_COLUMNS
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets_tests.conftest import TINY_COLUMNS, tiny_module
from batchinfer_assets_tests.support import materialize_pipeline, materializations, pipeline_resources

DAY = "2025-03-10"
# The upstream tables are written straight into storage by the tests; only drift_metrics is materialized.
ROWS = 3000
WEIGHTS = np.array([0.8, -1.5, 2.25])


@pytest.fixture(scope="module")
def no_reference_registry(tmp_path_factory) -> MlflowModelRegistryResource:
    """The tiny model registered without a training reference sample."""
    import mlflow

    from batchinfer_assets.lib.model_loading import ensure_experiment, log_torch_model, make_client, mlflow_uris

    root = tmp_path_factory.mktemp("no_reference_mlflow")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    artifact_location = str(root / "artifacts")
    client = make_client(tracking_uri)
    experiment_id = ensure_experiment(client, "no-reference", artifact_location)
    example = np.random.default_rng(0).normal(size=(6, len(TINY_COLUMNS))).astype(np.float32)
    with mlflow_uris(tracking_uri), mlflow.start_run(experiment_id=experiment_id):
        log_torch_model(
            tiny_module(),
            input_columns=TINY_COLUMNS,
            example=example,
            serialization_format="pickle",
            registered_model_name="bare",
        )
    client.set_registered_model_alias("bare", "champion", "1")
    return MlflowModelRegistryResource(
        tracking_uri=tracking_uri, model_uri="models:/bare@champion", artifact_location=artifact_location
    )


@pytest.fixture
def tiny_registry(tiny_model_store) -> MlflowModelRegistryResource:
    """The tiny model whose training reference has six rows: too few to judge against."""
    return MlflowModelRegistryResource(
        tracking_uri=tiny_model_store.tracking_uri,
        model_uri="models:/tiny-pickle@champion",
        artifact_location=tiny_model_store.artifact_location,
    )


def _day_before(day: str, k: int) -> str:
    return (dt.date.fromisoformat(day) - dt.timedelta(days=k)).isoformat()


def _write_day(store: PartitionedParquetStore, day: str, seed: int, velocity_shift: float = 0.0, version: str = "1"):
    """A snapshot of the tiny model's columns and its true scores, written as the pipeline would."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, len(TINY_COLUMNS))).astype(np.float32)
    x[:, 1] += np.float32(velocity_shift)
    ids = [f"{day}-{i:06d}" for i in range(ROWS)]
    snapshot = pd.DataFrame(x, columns=list(TINY_COLUMNS)).assign(transaction_id=ids)[["transaction_id", *TINY_COLUMNS]]
    score = (1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ WEIGHTS - 0.25)))).astype(np.float32)
    preds = pd.DataFrame(
        {"transaction_id": ids, "score": score, "label": (score >= 0.5).astype(np.int64),
         "model_name": "tiny-pickle", "model_version": version}
    )
    store.write_partition("input_snapshot", day, pa.Table.from_pandas(snapshot, preserve_index=False))
    store.write_partition("predictions", day, pa.Table.from_pandas(preds, preserve_index=False))


def _run(storage: Path, registry: MlflowModelRegistryResource, day: str = DAY) -> dg.ExecuteInProcessResult:
    result = materialize_pipeline(pipeline_resources(storage, registry), ["drift_metrics"], partition_key=day)
    assert result.success
    return result


def _metadata(result: dg.ExecuteInProcessResult, day: str = DAY) -> dict:
    return materializations(result, "drift_metrics")[day].metadata


def _rows(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    return table[table["reference"] == reference].set_index("feature")


def test_shift_in_one_column_is_flagged_against_the_trailing_week_and_the_check_warns(tmp_path, tiny_registry):
    store = PartitionedParquetStore(tmp_path)
    for k in range(1, 8):
        _write_day(store, _day_before(DAY, k), seed=k)
    _write_day(store, DAY, seed=99, velocity_shift=1.0)

    result = _run(tmp_path, tiny_registry)
    table = store.read_partition("drift_metrics", DAY).to_pandas()

    assert list(table.columns)[: len(DRIFT_COLUMNS)] == list(DRIFT_COLUMNS)
    week = _rows(table, "trailing_7d")
    assert set(week.index) == {*TINY_COLUMNS, "score"}
    assert (week["n_reference"] == 7 * ROWS).all() and (week["n_current"] == ROWS).all()
    assert week["drifted"].to_dict() == {"amount_z": False, "velocity": True, "risk": False, "score": True}
    # Six training rows are reported, never judged.
    training = _rows(table, "training")
    assert (training["n_reference"] == 6).all()
    assert training["threshold"].isna().all() and not training["drifted"].any()

    meta = _metadata(result)
    assert meta["dataset_drifted"].value is True
    # The score is counted apart from the features: one feature (velocity) drifted against the week.
    assert meta["features_drifted_vs_trailing_7d"].value == 1
    assert meta["features_judged_vs_trailing_7d"].value == 3
    assert meta["score_drifted"].value is True
    assert meta["verdict"].value.startswith("DATASET DRIFT: ") and "1 of 3 features drifted vs trailing_7d" in meta["verdict"].value
    drift = meta["drift_vs_training"].value
    assert drift["velocity"] >= 0 and list(drift.values()) == sorted(drift.values(), reverse=True)
    assert not [key for key, value in meta.items() if "/" in key], "per-feature figures stay in one entry"
    assert meta["n_reference_trailing"].value == 7 * ROWS
    most_drifted = meta["most_drifted"].value.splitlines()
    assert {most_drifted[2].split("|")[1].strip(), most_drifted[3].split("|")[1].strip()} == {"velocity", "score"}
    report = Path(meta["report"].value)
    assert report == tmp_path / "drift_reports" / f"dt={DAY}" / "report.html"
    page = report.read_text()
    assert "DRIFTED" in page and "<svg" in page and "velocity" in page

    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == DRIFT_CHECK
    assert check.passed is False
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["day"].value == DAY
    assert set(check.metadata["drifted_features"].value) == {"velocity", "score"}


def test_day_like_its_trailing_week_is_not_flagged_and_the_check_passes(tmp_path, tiny_registry):
    store = PartitionedParquetStore(tmp_path)
    for k in range(1, 8):
        _write_day(store, _day_before(DAY, k), seed=k)
    _write_day(store, DAY, seed=99)

    result = _run(tmp_path, tiny_registry)
    week = _rows(store.read_partition("drift_metrics", DAY).to_pandas(), "trailing_7d")

    assert not week["drifted"].any()
    assert week["threshold"].notna().all()
    (check,) = result.get_asset_check_evaluations()
    assert check.passed is True and check.severity == dg.AssetCheckSeverity.WARN
    assert "no dataset drift" in Path(_metadata(result)["report"].value).read_text()


def test_trailing_reference_uses_the_days_that_exist_and_only_same_model_scores(tmp_path, tiny_registry):
    store = PartitionedParquetStore(tmp_path)
    _write_day(store, _day_before(DAY, 1), seed=1)
    _write_day(store, _day_before(DAY, 3), seed=3, version="0")
    _write_day(store, _day_before(DAY, 6), seed=6)
    _write_day(store, DAY, seed=99)

    _run(tmp_path, tiny_registry)
    week = _rows(store.read_partition("drift_metrics", DAY).to_pandas(), "trailing_7d")

    assert (week.loc[list(TINY_COLUMNS), "n_reference"] == 3 * ROWS).all()
    assert week.loc["score", "n_reference"] == 2 * ROWS
    report = (tmp_path / "drift_reports" / f"dt={DAY}" / "report.html").read_text()
    assert "3 of 7 days" in report and "not [&#x27;1&#x27;]" in report


def test_model_without_training_reference_is_compared_with_the_trailing_week_only(tmp_path, no_reference_registry):
    store = PartitionedParquetStore(tmp_path)
    for k in (1, 2):
        _write_day(store, _day_before(DAY, k), seed=k)
    _write_day(store, DAY, seed=99)

    result = _run(tmp_path, no_reference_registry)
    table = store.read_partition("drift_metrics", DAY).to_pandas()

    assert set(table["reference"]) == {"trailing_7d"}
    meta = _metadata(result)
    assert "no training reference" in meta["notes"].value
    assert meta["references"].value == ["trailing_7d"]


def test_first_day_without_any_reference_writes_an_empty_table_and_passes(tmp_path, no_reference_registry):
    store = PartitionedParquetStore(tmp_path)
    _write_day(store, DAY, seed=99)

    result = _run(tmp_path, no_reference_registry)

    assert store.read_partition("drift_metrics", DAY).num_rows == 0
    (check,) = result.get_asset_check_evaluations()
    assert check.passed is True
    meta = _metadata(result)
    assert "features_judged_vs_training" not in meta and meta["verdict"].value.startswith("no dataset drift: nothing judged")
    assert not math.isnan(meta["n_reference_trailing"].value)


def test_predictions_that_do_not_line_up_with_the_snapshot_fail_naming_the_day(tmp_path, tiny_registry):
    store = PartitionedParquetStore(tmp_path)
    _write_day(store, DAY, seed=99)
    preds = store.read_partition("predictions", DAY).to_pandas().iloc[::-1]
    store.write_partition("predictions", DAY, pa.Table.from_pandas(preds, preserve_index=False))

    with pytest.raises(dg.Failure, match=f"DriftInputError: {DAY}: predictions .* do not line up"):
        materialize_pipeline(pipeline_resources(tmp_path, tiny_registry), ["drift_metrics"], partition_key=DAY)
