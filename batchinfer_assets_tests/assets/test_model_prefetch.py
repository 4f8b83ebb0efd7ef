"""The run's model loads on a worker thread while the first day's earlier stages run; only scoring waits for it."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from batchinfer_assets.assets.run_model import MODEL_LOADER_THREAD
from batchinfer_assets.definitions import build_resources
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.resources.landing_zone import SyntheticLandingZoneResource
from batchinfer_assets.resources.model_registry import ResolvedModel
from batchinfer_assets.resources.torch_scorer import LoadedModel, TorchScorerResource
from batchinfer_assets.settings import Settings
from batchinfer_assets.tables import (
    DRIFT_METRICS,
    INPUT_SNAPSHOT,
    PREDICTION_PERFORMANCE,
    PREDICTIONS,
    PUBLISHED_PREDICTIONS,
    QUARANTINED_TRANSACTIONS,
    RAW_TRANSACTIONS,
    TRANSACTION_FEATURES,
)
from batchinfer_assets_tests.support import materialize_pipeline, materializations

DAY = "2025-04-08"
PIPELINE = [
    RAW_TRANSACTIONS,
    TRANSACTION_FEATURES,
    QUARANTINED_TRANSACTIONS,
    INPUT_SNAPSHOT,
    PREDICTIONS,
    DRIFT_METRICS,
    PUBLISHED_PREDICTIONS,
    PREDICTION_PERFORMANCE,
]


@dataclass
class Watch:
    """What one test's resources saw: on which threads the load and the raw stage ran, and in which order."""

    raw_began: threading.Event = field(default_factory=threading.Event)
    raw_thread: threading.Thread | None = None
    load_thread: threading.Thread | None = None
    raw_began_while_loading: bool = False


# Resources are rebuilt from their fields by Dagster: they find their test's Watch by its token.
WATCHES: dict[str, Watch] = {}


class WatchedLandingZone(SyntheticLandingZoneResource):
    """The synthetic landing zone, noting when and on which thread the day's raw stage reads it."""

    token: str = Field(description="Key of the test's Watch.")

    def _read_day(self, day: dt.date, domain) -> pd.DataFrame:
        watch = WATCHES[self.token]
        watch.raw_thread = threading.current_thread()
        watch.raw_began.set()
        return super()._read_day(day, domain)


class WatchedScorer(TorchScorerResource):
    """The real scorer, whose load notes its thread and finishes only once the day's raw stage has begun.

    A load that runs before the day (or inside the predictions stage) never sees the raw stage begin; it gives
    up after `patience_s` and loads anyway, so the test fails instead of hanging.
    """

    token: str = Field(description="Key of the test's Watch.")
    patience_s: float = Field(default=30.0, description="How long the load waits for the raw stage to begin.")

    def load(self, resolved: ResolvedModel) -> LoadedModel:
        watch = WATCHES[self.token]
        watch.load_thread = threading.current_thread()
        watch.raw_began_while_loading = watch.raw_began.wait(timeout=self.patience_s)
        return super().load(resolved)


class UnreachableOnceScorer(TorchScorerResource):
    """The real scorer, whose first load fails like a dropped connection to the artifact store."""

    attempts_file: str = Field(description="Counts loads across retries (each try may rebuild the resource).")

    def load(self, resolved: ResolvedModel) -> LoadedModel:
        counter = Path(self.attempts_file)
        attempts = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(attempts + 1))
        if attempts == 0:
            raise ConnectionResetError(f"connection reset while reading {resolved.pinned_uri}")
        return super().load(resolved)


def _resources(settings: Settings, **overrides) -> dict:
    return build_resources(settings) | overrides


def _events(result: dg.ExecuteInProcessResult, event_type: dg.DagsterEventType) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type == event_type]


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(MODEL_LOADER_THREAD)]


def test_the_model_loads_on_another_thread_while_the_day_begins_and_scores_as_a_waiting_run(pipeline_settings, request):
    settings = pipeline_settings
    token = request.node.nodeid
    watch = WATCHES[token] = Watch()
    instance = dg.DagsterInstance.ephemeral()
    resources = _resources(
        settings,
        landing_zone=WatchedLandingZone(rows_per_day=settings.rows_per_day, token=token),
        torch_scorer=WatchedScorer(device="cpu", token=token),
    )
    try:
        result = materialize_pipeline(resources, PIPELINE, partition_key=DAY, instance=instance)
    finally:
        del WATCHES[token]

    assert result.success
    assert watch.load_thread is not None and watch.raw_thread is not None
    assert watch.load_thread is not watch.raw_thread, "loaded on the step's own thread"
    assert watch.load_thread.name.startswith(MODEL_LOADER_THREAD)
    assert watch.raw_began_while_loading, "the load did not overlap the day's raw stage"
    assert _loader_threads() == []
    messages = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any(m.startswith("loaded models:/fraud-detector/1 on cpu in ") for m in messages), messages
    assert any(
        m == "model was ready when the predictions stage asked for it"
        or (m.startswith("model ready ") and m.endswith(" s after the predictions stage asked for it"))
        for m in messages
    ), messages

    store = PartitionedParquetStore(settings.storage_uri)
    prefetched = store.read_partition(PREDICTIONS, DAY)
    # Scoring alone: the load has nothing to overlap, the predictions stage waits for all of it.
    waiting = materialize_pipeline(_resources(settings), [PREDICTIONS], partition_key=DAY)
    assert waiting.success
    assert store.read_partition(PREDICTIONS, DAY).equals(prefetched)
    assert (
        materializations(waiting, PREDICTIONS)[DAY].tags["dagster/data_version"]
        == materializations(result, PREDICTIONS)[DAY].tags["dagster/data_version"]
    )


def test_a_model_that_cannot_load_fails_the_run_once_before_any_prediction(pipeline_settings):
    settings = pipeline_settings
    resources = _resources(settings)
    # The version's artifacts are cached on this machine, then the cached weights are damaged (a bad disk, a
    # copy cut short): the version resolves, its checksum reads from the cache, and only the load fails.
    resolved = resources["model_registry"].resolve()
    weights = Path(resolved.local_path) / "data" / "model.pt2"
    weights.write_bytes(weights.read_bytes()[:100])

    result = materialize_pipeline(resources, PIPELINE, partition_key=DAY, raise_on_error=False)

    assert not result.success
    assert _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == [], "a model that cannot load is not retried"
    failures = _events(result, dg.DagsterEventType.STEP_FAILURE)
    assert len(failures) == 1
    assert failures[0].step_failure_data.user_failure_data.description.startswith("loading models:/fraud-detector/1: ")
    assert not list((Path(settings.storage_uri) / PREDICTIONS).glob(f"dt={DAY}/*.parquet")), "no predictions written"
    assert materializations(result, PREDICTIONS) == {}
    assert _loader_threads() == []


def test_a_load_that_may_clear_with_time_goes_to_the_retry_policy(pipeline_settings, tmp_path):
    settings = pipeline_settings
    attempts = tmp_path / "load_attempts"
    resources = _resources(settings, torch_scorer=UnreachableOnceScorer(device="cpu", attempts_file=str(attempts)))

    result = materialize_pipeline(resources, PIPELINE, partition_key=DAY)

    assert result.success
    assert len(_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert attempts.read_text() == "2"
    assert list((Path(settings.storage_uri) / PREDICTIONS).glob(f"dt={DAY}/*.parquet"))
    assert sorted(materializations(result, PREDICTIONS)) == [DAY]
    assert _loader_threads() == []
