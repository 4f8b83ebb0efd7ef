"""Transient failures are retried with backoff; bad data fails once, with the problem named."""

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from batchinfer_assets.definitions import build_definitions
from batchinfer_assets.resources.landing import LandingZoneResource, ParquetLandingZoneResource, SyntheticLandingZoneResource
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.retries import TRANSIENT_RETRY
from batchinfer_assets.settings import Settings
from batchinfer_assets_tests.support import materialize_pipeline, pipeline_resources

DAY = "2025-05-06"


class FlakyLandingZoneResource(LandingZoneResource):
    """A landing zone whose first reads fail like a dropped connection, then serve the synthetic day."""

    failures: int = Field(description="How many reads fail before one succeeds.")
    attempts_file: str = Field(description="Counts reads across retries (each try may rebuild the resource).")

    def location(self, day: dt.date) -> str:
        return f"flaky://{day}"

    def _read_day(self, day: dt.date) -> pd.DataFrame:
        counter = Path(self.attempts_file)
        attempts = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(attempts + 1))
        if attempts < self.failures:
            raise ConnectionResetError(f"connection reset while listing {self.location(day)}")
        return SyntheticLandingZoneResource(rows_per_day=200).load_day(day)


def _resources(tmp_path: Path, landing: LandingZoneResource) -> dict:
    # raw_transactions alone never touches the model registry.
    unused_registry = MlflowModelRegistryResource(tracking_uri=f"sqlite:///{tmp_path / 'unused-mlflow.db'}")
    return pipeline_resources(tmp_path / "storage", unused_registry, landing_zone=landing)


def _events(result, event_type: dg.DagsterEventType):
    return [e for e in result.all_events if e.event_type == event_type]


def test_every_daily_asset_retries_transient_failures(tmp_path):
    defs = build_definitions(Settings.from_env({}, cwd=tmp_path))
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable:
            assert graph.assets_def_for_key(key).op.retry_policy == TRANSIENT_RETRY, key.to_user_string()


def test_a_transient_failure_is_retried_and_the_day_lands(tmp_path):
    landing = FlakyLandingZoneResource(failures=1, attempts_file=str(tmp_path / "attempts"))
    result = materialize_pipeline(_resources(tmp_path, landing), ["raw_transactions"], partition_key=DAY)
    assert result.success
    assert len(_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert (tmp_path / "attempts").read_text() == "2"
    assert list((tmp_path / "storage" / "raw_transactions" / f"dt={DAY}").glob("*.parquet"))


def test_bad_landing_data_fails_once_without_retry(tmp_path):
    (tmp_path / "landing").mkdir()
    result = materialize_pipeline(
        _resources(tmp_path, ParquetLandingZoneResource(uri=str(tmp_path / "landing"))),
        ["raw_transactions"],
        partition_key=DAY,
        raise_on_error=False,
    )
    assert not result.success
    assert _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == []
    failure = _events(result, dg.DagsterEventType.STEP_FAILURE)[0].step_failure_data
    assert "LandingDataError: no landing data for 2025-05-06" in failure.user_failure_data.description
