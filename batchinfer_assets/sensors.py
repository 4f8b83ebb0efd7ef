"""Sensors: publishing follows predictions, performance follows labels, and freshness checks are evaluated as days close."""

import datetime as dt
import json
import math

import dagster as dg

# Dagster has no public constructor for the subset behind `RunRequest.for_asset_graph_subset`, the only way
# a sensor can request a backfill (one single-run backfill for many days instead of one run per day).
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey

from batchinfer_assets import tables
from batchinfer_assets.assets.prediction_performance import LABELS_FINGERPRINT_KEY
from batchinfer_assets.domain import Domain
from batchinfer_assets.freshness import DEADLINE_HOUR_UTC, due_day, latest_deadline, on_time_evaluations
from batchinfer_assets.lib.model_loading import ModelNotFoundError
from batchinfer_assets.lib.redaction import redact, redacted_error
from batchinfer_assets.model_observations import last_observed_model_version, model_version_observation
from batchinfer_assets.resources.domain import DomainResource
from batchinfer_assets.resources.labels_zone import LabelsResource
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.run_worker import is_alive
from batchinfer_assets.tags import REPRODUCES_TAG, TRIGGER_TAG, WORKER_TAG

PREDICTIONS = dg.AssetKey(tables.PREDICTIONS)
PUBLISHED_PREDICTIONS = dg.AssetKey(tables.PUBLISHED_PREDICTIONS)
PREDICTION_PERFORMANCE = dg.AssetKey(tables.PREDICTION_PERFORMANCE)
# Scored days whose labels are watched at least (a labels zone's labels are expected within about two months).
LABELS_WINDOW_DAYS = 60
_BATCH = 1000


@dg.sensor(
    name="publish_predictions_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[PUBLISHED_PREDICTIONS],
    description="Publishes every day whose predictions were materialized and not yet published since.",
)
def publish_predictions_sensor(context: dg.SensorEvaluationContext):
    """Requests `published_predictions` for each day whose `predictions` landed after its last publication.

    It reads every new materialization of `predictions` (a storage-id cursor, so old days and multi-day
    backfills are all seen, unlike `@asset_sensor`), waits for the run that wrote it to finish (that run may
    publish the day itself), and requests the remaining days as one backfill, which the single-run backfill
    policy turns into one run.
    """
    instance = context.instance
    cursor = int(context.cursor) if context.cursor else 0
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=PREDICTIONS, after_storage_id=cursor), limit=_BATCH, ascending=True
    ).records

    landed: dict[str, int] = {}
    new_cursor = cursor
    finished_runs: dict[str, bool] = {}
    reproductions: set[str] = set()
    for record in records:
        if record.run_id not in finished_runs:
            run = instance.get_run_by_id(record.run_id)
            finished_runs[record.run_id] = run is None or run.is_finished
            if run is not None and REPRODUCES_TAG in run.tags:
                reproductions.add(record.run_id)
        if not finished_runs[record.run_id]:
            break
        new_cursor = record.storage_id
        # An audit reproduction re-scores a past day as it was; what apps read stays as published.
        if record.partition_key is not None and record.run_id not in reproductions:
            landed[record.partition_key] = record.storage_id

    if not landed:
        return dg.SensorResult(skip_reason="no new predictions", cursor=str(new_cursor))

    published = instance.get_latest_storage_id_by_partition(
        PUBLISHED_PREDICTIONS, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(landed)
    )
    days = sorted(day for day, storage_id in landed.items() if published.get(day, -1) < storage_id)
    if not days:
        return dg.SensorResult(
            skip_reason=f"{len(landed)} day(s) already published by the runs that scored them",
            cursor=str(new_cursor),
        )
    context.log.info(f"publishing {len(days)} day(s): {days[0]}..{days[-1]}")
    subset = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(PUBLISHED_PREDICTIONS, day) for day in days},
        asset_graph=context.repository_def.asset_graph,
    )
    return dg.SensorResult(
        run_requests=[dg.RunRequest.for_asset_graph_subset(subset, tags={TRIGGER_TAG: "predictions"})],
        cursor=str(new_cursor),
    )


@dg.sensor(
    name="prediction_performance_sensor",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[PREDICTION_PERFORMANCE],
    description="Re-evaluates exactly the scored days whose labels changed, or that were scored again, since their last evaluation.",
)
def prediction_performance_sensor(context: dg.SensorEvaluationContext, labels: LabelsResource, domain: DomainResource):
    """Requests `prediction_performance` for each recent scored day whose labels or predictions changed, as one backfill.

    Watches the most recent `labels_window_days(domain)` days that have predictions. A day is requested when
    - its labels changed: their fingerprint (file names, sizes and modification times; for the synthetic source,
      the last daily drop that can have released labels for the day) differs from the cursor's, or, for a day the
      cursor does not know yet, from the one recorded on the day's latest evaluation; or
    - its predictions are newer than its latest evaluation (re-scored, or never evaluated), once per new
      predictions materialization, so a day whose evaluation keeps failing is not requested at every tick.
    A day whose latest predictions come from a run still in progress waits: that run may evaluate it itself.
    Nothing is read but file listings and the instance's records.
    """
    instance = context.instance
    previous: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    watched = domain.load()
    scored = sorted(instance.get_materialized_partitions(PREDICTIONS))[-labels_window_days(watched):]
    if not scored:
        return dg.SensorResult(skip_reason="no scored days yet", cursor=json.dumps({}))
    materialized = dg.DagsterEventType.ASSET_MATERIALIZATION
    scored_at = instance.get_latest_storage_id_by_partition(PREDICTIONS, materialized, partitions=set(scored))
    evaluated_at = instance.get_latest_storage_id_by_partition(PREDICTION_PERFORMANCE, materialized, partitions=set(scored))

    cursor: dict[str, list] = {}
    changed: dict[str, str] = {}
    waiting: list[str] = []
    for day in scored:
        try:
            fingerprint = labels.label_files_fingerprint(dt.date.fromisoformat(day), watched)
        except Exception as error:
            raise redacted_error(error) from None  # shown in the tick: an S3 endpoint's credentials masked
        seen_fingerprint, seen_scored_at = previous.get(day) or (_evaluated_fingerprint(instance, day), None)
        if fingerprint != seen_fingerprint:
            changed[day] = "labels changed"
        elif scored_at[day] > evaluated_at.get(day, -1) and scored_at[day] != seen_scored_at:
            changed[day] = "scored since its last evaluation" if day in evaluated_at else "never evaluated"
        if day in changed and not _scoring_run_finished(instance, day):
            del changed[day]
            waiting.append(day)
            continue  # left out of the cursor: judged again at the next tick
        cursor[day] = [fingerprint, scored_at[day]]

    new_cursor = json.dumps(cursor, sort_keys=True)
    if not changed:
        waits = f"; {len(waiting)} day(s) wait for the run scoring them" if waiting else ""
        return dg.SensorResult(
            skip_reason=f"labels and predictions unchanged for the {len(scored)} scored day(s) {scored[0]}..{scored[-1]}{waits}",
            cursor=new_cursor,
        )
    context.log.info("re-evaluating " + ", ".join(f"{day} ({why})" for day, why in changed.items()))
    subset = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(PREDICTION_PERFORMANCE, day) for day in changed},
        asset_graph=context.repository_def.asset_graph,
    )
    return dg.SensorResult(
        run_requests=[dg.RunRequest.for_asset_graph_subset(subset, tags={TRIGGER_TAG: "labels"})],
        cursor=new_cursor,
    )


def labels_window_days(domain: Domain) -> int:
    """How many recent scored days the sensor watches: LABELS_WINDOW_DAYS, or up to the last drop of a synthetic source.

    A synthetic label given `max_label_delay_days` after the end of its day is released in the next day's drop, as
    `SyntheticLabelsResource.label_files_fingerprint` counts.
    """
    if domain.synthetic is None:
        return LABELS_WINDOW_DAYS
    return max(LABELS_WINDOW_DAYS, math.ceil(domain.synthetic.max_label_delay_days) + 1)


def _evaluated_fingerprint(instance: dg.DagsterInstance, day: str) -> str | None:
    """The labels fingerprint the day's latest evaluation recorded; None when it was never evaluated."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=PREDICTION_PERFORMANCE, asset_partitions=[day]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(LABELS_FINGERPRINT_KEY)
    return None if value is None else str(value.value)


def _scoring_run_finished(instance: dg.DagsterInstance, day: str) -> bool:
    """Whether the run that wrote the day's latest predictions is over (it may evaluate the day itself)."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=PREDICTIONS, asset_partitions=[day]), limit=1).records
    run = instance.get_run_by_id(records[0].run_id) if records else None
    return run is None or run.is_finished


@dg.sensor(
    name="freshness_checks_sensor",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        f"At each {DEADLINE_HOUR_UTC:02d}:00 UTC deadline, records on delivery_deadline whether yesterday's predictions "
        "and published predictions were materialized in time (no run is launched)."
    ),
)
def freshness_checks_sensor(context: dg.SensorEvaluationContext):
    """Records each due asset's on-time verdict once per deadline, as check evaluations of no run.

    The cursor is the last deadline judged. A day that lands late keeps its failed verdict; the next deadline
    is judged on its own day.
    """
    deadline = latest_deadline(dt.datetime.now(dt.timezone.utc))
    if context.cursor and float(context.cursor) >= deadline.timestamp():
        return dg.SkipReason(f"{due_day(deadline)} was judged at its deadline; the next one is {deadline + dt.timedelta(days=1):%Y-%m-%d %H:%M} UTC")
    evaluations = on_time_evaluations(context.instance, deadline)
    verdicts = [f"{e.check_name} {'passed' if e.passed else 'failed'}" for e in evaluations]
    for evaluation in evaluations:
        context.log.info(f"{evaluation.check_name}: {'passed' if evaluation.passed else 'failed'}: {evaluation.description}")
    # A tick that launches no run reads "skipped" in the UI; its reason says what it recorded.
    recorded = f"recorded for {due_day(deadline)}: {', '.join(verdicts)}" if verdicts else "nothing due yet"
    return dg.SensorResult(asset_events=evaluations, cursor=str(deadline.timestamp()), skip_reason=recorded)


@dg.sensor(
    name="model_version_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Observes scoring_model when the configured model URI resolves to another version (an alias move), so "
        "every day scored with the previous version turns stale without anyone pressing Observe."
    ),
)
def model_version_sensor(context: dg.SensorEvaluationContext, model_registry: MlflowModelRegistryResource):
    """Records an observation of `scoring_model` whenever its resolved version differs from the last one recorded.

    A registry lookup per tick (no download): the observation's data version is the version, which is what each
    day's predictions recorded as their input, so Dagster marks a day stale exactly when the version that scored
    it is no longer the one the URI resolves to.
    """
    try:
        pinned_uri, version = model_registry.current_version()
    except ModelNotFoundError as error:
        return dg.SkipReason(redact(f"{model_registry.model_uri} does not resolve yet: {error}"))
    except Exception as error:
        # A tick's error is shown with the errors that caused it: an unreachable registry's URI in them is masked.
        raise redacted_error(error) from None
    observed = last_observed_model_version(context.instance)
    if observed == version:
        return dg.SkipReason(f"{model_registry.model_uri} still resolves to version {version}")
    context.log.info(f"{model_registry.model_uri} now resolves to {pinned_uri} (last observed: {observed or 'never'})")
    return dg.SensorResult(asset_events=[model_version_observation(model_registry.model_uri, pinned_uri, version)])


@dg.sensor(
    name="orphaned_runs_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks runs whose worker process died (SIGKILL, OOM killer, a reboot) as failed, so they do not stay STARTED.",
)
def orphaned_runs_sensor(context: dg.SensorEvaluationContext):
    """Fails STARTED pipeline runs whose worker process on this host is gone.

    The local run launcher starts run workers as child processes of the code location server (where this sensor
    runs too) and cannot tell Dagster's run monitoring whether a worker is alive, so a killed run stayed
    STARTED forever. Each pipeline run tags itself with `host/pid/start time`; a run whose host is this one and
    whose process is gone (or whose pid now belongs to a newer process) is reported failed, which also lets the
    run-retry daemon retry it. Runs on other hosts are left to their launcher's monitoring.
    """
    records = context.instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=200)
    failed = []
    for record in records:
        worker = record.dagster_run.tags.get(WORKER_TAG, "")
        if is_alive(worker) is not False:
            continue  # running, or not ours to judge
        current = context.instance.get_run_by_id(record.dagster_run.run_id)
        if current is None or current.status != dg.DagsterRunStatus.STARTED:
            continue
        context.instance.report_run_failed(
            current, f"run worker {worker} is gone (killed, or the machine restarted) while the run was STARTED"
        )
        failed.append(current.run_id)
    if not failed:
        return dg.SkipReason(f"{len(records)} started run(s), none orphaned")
    context.log.info(f"marked {len(failed)} orphaned run(s) failed: {', '.join(failed)}")
    return dg.SkipReason(f"marked {len(failed)} orphaned run(s) failed")
