"""The daily pipeline: every stage of one day before the next day, in one step that loads the model once.

Eight assets, one step. Each run covers one day or a single-run range of days; for each day the selected
stages run in lineage order and hand the day to each other in memory, then the day is let go, so a run
holds one day whatever the range. Every day gets its own materializations (with its own data version),
its own check verdicts and its own failure: a day blocked by a check, or whose data is unusable, stops
there and is named when the step fails at the end, after the other days were done. Any selection of the
eight assets runs (`can_subset`): a stage whose upstream is not selected reads it from storage.
"""


import ctypes
import gc
import hashlib
import inspect
import time
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa

from batchinfer_assets.assets import (
    _run,
    drift_metrics,
    input_snapshot,
    prediction_performance,
    predictions,
    published_predictions,
    raw_transactions,
    transaction_features,
)
from batchinfer_assets.assets._run import DayBlocked, DayState, PipelineRun
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.domain import Domain, load_domain
from batchinfer_assets.lib import hashing, parquet_store
from batchinfer_assets.lib.code_version import code_version_of
from batchinfer_assets.lib.drift import import_statistics_in_background
from batchinfer_assets.lib.redaction import redact, redacted_error
from batchinfer_assets.schemas import load_validation_in_background
from batchinfer_assets.lib.snapshot_archive import SnapshotArchive
from batchinfer_assets.partitions import PIPELINE_GROUP, daily_partitions
from batchinfer_assets.resources.labels_zone import LabelsResource, PerformancePolicyResource
from batchinfer_assets.resources.landing_zone import LandingZoneResource
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.resources.prediction_db import PredictionDatabaseResource
from batchinfer_assets.resources.scoring_engine import (
    RemoteScoringEngine,
    ScoringEngineResource,
)
from batchinfer_assets.resources.table_storage import TableStorageResource
from batchinfer_assets.resources.torch_scorer import TorchScorerResource
from batchinfer_assets.resources.validation import ValidationPolicyResource
from batchinfer_assets.retries import BAD_DATA_ERRORS, TRANSIENT_RETRY, step_failure
from batchinfer_assets.run_worker import this_worker
from batchinfer_assets.tables import (
    DRIFT_METRICS,
    INPUT_SNAPSHOT,
    PREDICTIONS,
    QUARANTINED_TRANSACTIONS,
    TRANSACTION_FEATURES,
)
from batchinfer_assets.tags import DAYS_TAG, PROGRESS_TAG, WORKER_TAG

# The stages of a day, in lineage order; each declares its assets, checks, inputs and code (`stage.Stage`).
# Last: a bad labels file stops only the day's evaluation, after the day was scored and published.
STAGES: tuple[Stage, ...] = (
    raw_transactions.STAGE,
    transaction_features.STAGE,
    input_snapshot.STAGE,
    predictions.STAGE,
    drift_metrics.STAGE,
    published_predictions.STAGE,
    prediction_performance.STAGE,
)

# Assets whose stage reads the run's model version (signature check, scoring, drift's training reference).
MODEL_STAGES = frozenset(asset for stage in STAGES if stage.uses_model for asset in stage.assets)


def code_versions(domain: Domain) -> dict[str, str]:
    """Each asset's code version: its stage's modules, and where they decide its output the domain's declaration and
    feature code."""
    shared = (_run, parquet_store, hashing)
    declared = domain_fingerprint(domain)
    feature_code = tuple({inspect.getmodule(domain.features)} - {None})
    versions = {}
    for stage in STAGES:
        modules = (inspect.getmodule(stage.day), *stage.code, *(feature_code if stage.feature_code else ()))
        version = code_version_of(*shared, *modules)
        if stage.domain_declaration:
            version = hashlib.sha256(f"{version}:{declared}".encode()).hexdigest()[:12]
        versions.update(dict.fromkeys(stage.assets, version))
    return versions


def domain_fingerprint(domain: Domain) -> str:
    """What in a domain's declaration decides its tables' content (columns, rules, features, labels)."""
    parts = (
        domain.name,
        domain.id_column,
        repr(sorted((c, str(t)) for c, t in domain.landing_columns.items())),
        repr(domain.row_schema),
        repr(domain.event_time_column),
        repr(domain.group_column),
        repr(list(domain.feature_descriptions)),
        repr(domain.business_columns),
        domain.label_column,
        repr(sorted((c, sorted(v)) for c, v in domain.vocabularies.items())),
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build_daily_pipeline(domain: Domain) -> dg.AssetsDefinition:
    """The daily pipeline's one multi-asset for `domain`: every stage of each day, the model loaded once per run."""
    versions = code_versions(domain)
    specs = [
        spec.replace_attributes(
            partitions_def=daily_partitions, group_name=PIPELINE_GROUP, code_version=versions[spec.key.to_user_string()]
        )
        for stage in STAGES
        for spec in stage.specs(domain)
    ]

    @dg.multi_asset(
        name="daily_pipeline",
        specs=specs,
        check_specs=[check for stage in STAGES for check in stage.checks],
        can_subset=True,
        partitions_def=daily_partitions,
        # One run per backfill range: the model is loaded once, and days go through one at a time.
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=TRANSIENT_RETRY,
        pool="scoring",
    )
    def daily_pipeline(
        context: dg.AssetExecutionContext,
        landing_zone: LandingZoneResource,
        validation_policy: ValidationPolicyResource,
        model_registry: MlflowModelRegistryResource,
        torch_scorer: TorchScorerResource,
        scoring_engine: ScoringEngineResource,
        table_storage: TableStorageResource,
        prediction_db: PredictionDatabaseResource,
        labels: LabelsResource,
        performance_policy: PerformancePolicyResource,
    ) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
        """Ingest, validate, featurize, snapshot, score, measure drift, publish and evaluate each day of the run."""
        run = PipelineRun(
            context=context,
            store=table_storage.store,
            landing_zone=landing_zone,
            validation_policy=validation_policy,
            model_registry=model_registry,
            torch_scorer=torch_scorer,
            scoring_engine=scoring_engine,
            prediction_db=prediction_db,
            code_versions=versions,
            labels=labels,
            performance_policy=performance_policy,
            snapshot_retention_days=table_storage.snapshot_retention_days,
            day_chunk_rows=table_storage.day_chunk_rows,
            spill_dir=table_storage.spill_dir,
            domain=domain,
        )
        yield from run_pipeline(run)

    return daily_pipeline


def run_pipeline(run: PipelineRun) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """The step: each day of the run through the selected stages; the step fails at the end naming each stopped day."""
    context = run.context
    # The Runs list shows tags: a range run names its days there (one-day runs carry dagster/partition).
    # The worker's host and pid let `orphaned_runs_sensor` tell a killed run from a running one.
    context.instance.add_run_tags(context.run.run_id, {DAYS_TAG: f"{run.days[0]}...{run.days[-1]}", WORKER_TAG: this_worker()})
    stopped: dict[str, str] = {}
    stages = [stage for stage in STAGES if any(a in run.selected for a in stage.assets)]
    context.log.info(
        f"{run.domain.name}: {len(run.days)} day(s) {run.days[0]}..{run.days[-1]}: "
        + ", ".join(a for stage in stages for a in stage.assets if a in run.selected)
    )
    try:
        yield from _run_days(run, stages, stopped)
    except Exception as error:
        # Only a failure that may clear up with time goes back to the retry policy; a bad setting, a bad model
        # or a bug fails once, now, saying where it happened. Either way with any credential in it masked.
        if isinstance(error, dg.Failure):
            raise
        raise step_failure(error, run.where) from redacted_error(error)
    # The verdicts went out day by day as evaluations of their partitions; the check outputs the step declares carry
    # nothing, but one never yielded is logged as "did not yield or return expected outputs" after every run.
    check_outputs = {spec.key: name for name, spec in context.assets_def.check_specs_by_output_name.items()}
    for key in context.selected_asset_check_keys:
        yield dg.Output(None, output_name=check_outputs[key])
    if stopped:
        raise dg.Failure(
            description=stopped_summary(stopped, len(run.days)),
            metadata={"stopped_days": dg.MetadataValue.json(dict(sorted(stopped.items())))},
            allow_retries=False,
        )


def stopped_summary(stopped: dict[str, str], days: int) -> str:
    """The step's failure message: how many of the run's days stopped, and where and why each one did."""
    reasons = " | ".join(f"{day}: {reason}" for day, reason in sorted(stopped.items()))
    if days == 1:
        return reasons
    if len(stopped) == days:
        return f"all {days} days stopped: {reasons}"
    return f"{len(stopped)} of {days} day(s) stopped (the other {days - len(stopped)} completed): {reasons}"


# The pipeline of the built-in domain; the code location builds its own from the settings' domain.
daily_pipeline = build_daily_pipeline(load_domain(None))


def _run_days(run: PipelineRun, stages: list[Stage], stopped: dict[str, str]) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Each day of the run through the selected stages; a day stopped by its data is noted in `stopped`."""
    context = run.context
    # The run's model is resolved before any day: a model that cannot be found fails the run at once, with
    # nothing written.
    if run.selected & MODEL_STAGES:
        run.resolved
        run.observe_model_version()
    if PREDICTIONS in run.selected:
        # A remote engine's actors load the model; this process only needs to reach the cluster.
        run.scoring_engine.prepare(context)
        if not isinstance(run.scoring_engine, RemoteScoringEngine):
            # Only scoring needs the loaded module: it loads while the first day's earlier stages run. A load
            # that fails fails the run at the next stage, and always before any predictions are written.
            run.start_loading_model()
    if DRIFT_METRICS in run.selected:
        import_statistics_in_background()
    if run.selected & {TRANSACTION_FEATURES, QUARANTINED_TRANSACTIONS, INPUT_SNAPSHOT}:
        load_validation_in_background()
    progress = Progress(run)
    going_on = "; the run goes on with the other days" if len(run.days) > 1 else ""
    try:
        for day in run.days:
            state = DayState(day)
            progress.start_day(day)
            for stage in stages:
                run.surface_model_load_failure()
                if not any(run.wants(a, day) for a in stage.assets):
                    continue
                started = time.perf_counter()
                scores = PREDICTIONS in stage.assets
                run.where = f"{day} {stage.name}" + (f" with {run.resolved.pinned_uri}" if scores else "") + ": "
                progress.at(stage.name)
                if scores and run.model_loader is not None:
                    # Outside the stage's handlers: a model that cannot load fails the run, not just the day.
                    run.model
                try:
                    run.require_inputs_stored(state, stage.name, stage.reads)
                    run.require_inputs_agree(state, stage.name, stage.reads)
                    yield from stage.day(run, state)
                except DayBlocked as blocked:
                    stopped[day] = str(blocked)
                    context.log.error(f"{day}: stopped at {blocked}{going_on}")
                    break
                except BAD_DATA_ERRORS as error:
                    stopped[day] = redact(f"{stage.name}: {type(error).__name__}: {error}")
                    context.log.error(f"{day}: {stopped[day]}{going_on}")
                    break
                context.log.debug(f"{day}: {stage.name} in {time.perf_counter() - started:.2f} s")
                if state.raw is None and state.features is None and state.snapshot is None:
                    # A streamed day (over day_chunk_rows, or a stage run alone): what a stage freed goes back
                    # before the next one, so each stage starts from the step's floor (a 20M-row day on the Ray
                    # engine otherwise carried the features stage's freed blocks into drift and publishing).
                    release_freed_memory()
            run.where = ""
            progress.end_day(stopped=day in stopped)
            del state
            release_freed_memory()
    finally:
        run.stop_loading_model()
    # No day got as far as scoring: a model that failed to load still fails the run.
    run.surface_model_load_failure()
    if PREDICTIONS in run.selected:
        prune_snapshot_archive(run)


class Progress:
    """The run's progress in its `PROGRESS_TAG` ("day 3 of 30 (2025-01-03): predictions; about 4 min left") and, for a
    range, a log line as each day ends."""

    def __init__(self, run: PipelineRun) -> None:
        self.run = run
        self.index = 0
        self.day = ""
        self.day_started = 0.0
        self.day_seconds: list[float] = []
        self.stopped = 0

    def start_day(self, day: str) -> None:
        self.index += 1
        self.day = day
        self.day_started = time.perf_counter()

    def left(self, days: float, minus: float = 0.0) -> str:
        """What `days` more days should take at the pace of the days done so far ("" before the first is done)."""
        if not self.day_seconds:
            return ""
        seconds = sum(self.day_seconds) / len(self.day_seconds) * days - minus
        return f"; about {_duration(max(seconds, 0.0))} left"

    def at(self, stage: str) -> None:
        total = len(self.run.days)
        left = self.left(total - self.index + 1, minus=time.perf_counter() - self.day_started)
        self._tag(f"day {self.index} of {total} ({self.day}): {stage}{left}")

    def end_day(self, stopped: bool) -> None:
        self.day_seconds.append(time.perf_counter() - self.day_started)
        self.stopped += stopped
        total = len(self.run.days)
        if self.index == total:
            done = total - self.stopped
            self._tag(f"{done} of {total} day(s) done" + (f", {self.stopped} stopped" if self.stopped else ""))
        if total > 1:
            outcome = "stopped" if stopped else "done"
            self.run.context.log.info(
                f"{self.day}: {outcome}, day {self.index} of {total} in {_duration(self.day_seconds[-1])}"
                + (self.left(total - self.index) if self.index < total else "")
            )

    def _tag(self, value: str) -> None:
        self.run.context.instance.add_run_tags(self.run.context.run.run_id, {PROGRESS_TAG: value})


def _duration(seconds: float) -> str:
    """Seconds as people read a wait: "40 s", "3 min", "1 h 20 min"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def prune_snapshot_archive(run: PipelineRun) -> None:
    """Remove archived snapshots past their retention that no published day's rows come from.

    Housekeeping: any failure is a warning and never replaces the run's own outcome (its days' results).
    """
    try:
        referenced = run.prediction_db.published_snapshot_hashes()
    except Exception as error:  # noqa: BLE001 - an unreadable database must never let referenced inputs go
        run.context.log.warning(f"snapshot archive not pruned: the prediction database could not say what is published ({redact(str(error))})")
        return
    finally:
        run.prediction_db.release_connections()
    try:
        removed = SnapshotArchive(run.store).prune(referenced, run.snapshot_retention_days)
    except Exception as error:  # noqa: BLE001 - see the docstring; a later run prunes what this one left
        run.context.log.warning(redact(f"snapshot archive not pruned: {type(error).__name__}: {error}"))
        return
    if removed:
        run.context.log.info(
            f"removed {len(removed)} archived snapshot(s) older than {run.snapshot_retention_days:g} days that no "
            f"published day uses: {', '.join(h[:12] for h in removed)}"
        )


def release_freed_memory() -> None:
    """Hand a finished day's freed memory back to the system, so a range run stays at one day's peak.

    Arrow's pool and glibc's allocator keep freed blocks for reuse; measured on 1M-row days, the step's memory
    at the start of each day grew from 0.6 GiB (day 1) to 2.3 GiB (day 8) without this.
    """
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim
