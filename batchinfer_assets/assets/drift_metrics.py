"""Drift of each day's inputs and scores against the model's training sample and the trailing week.

The trailing week is read straight from storage rather than declared as a
`TimeWindowPartitionMapping(start_offset=-7, end_offset=-1)` dependency: an asset can depend on
`input_snapshot` only once, the week is optional by design (whatever of it exists is used, and
`n_reference` says how much), and a declared dependency would make every day wait for, or fail on,
seven earlier days that may never be materialized. Each earlier day is read once per run and kept as a
fixed-size sample while it is inside some day's window, so memory stays near one day's whatever the range.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batchinfer_assets.assets._run import DayState, PipelineRun
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.lib import drift
from batchinfer_assets.lib.drift import (
    DriftConfig,
    DriftInputError,
    compute_drift,
    drift_markdown,
    empty_drift_table,
    prepare_reference,
    summarize_drift,
)
from batchinfer_assets.lib.drift_report import render_drift_report
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.lib.spill import bucket_count, bucket_of
from batchinfer_assets.resources.model_registry import ResolvedModel
from batchinfer_assets.tables import (
    DRIFT_CHECK,
    DRIFT_METRICS,
    DRIFT_REPORTS_FOLDER,
    INPUT_SNAPSHOT,
    PREDICTIONS,
    SCORING_MODEL,
)

TRAINING_REFERENCE = "training"
TRAILING_REFERENCE = "trailing_7d"
TRAILING_DAYS = 7
# Rows kept of each earlier day for the trailing reference: 7 x 50,000 rows judge drift as well as full days
# (the tests' thresholds are set on samples of this size) at a fixed memory cost.
TRAILING_ROWS_PER_DAY = 50_000
SCORE_COLUMN = "score"
# Rows read from storage at a time when a day is too big to read whole.
_READ_ROWS = 1 << 20
_MIN_READ_ROWS = 1 << 16
REPORT_FILE = "report.html"
DRIFT_CONFIG = DriftConfig()

DRIFT_METRICS_SPEC = dg.AssetSpec(
    DRIFT_METRICS,
    # The model too: the day is compared with the training sample of the version that scored it.
    deps=[INPUT_SNAPSHOT, PREDICTIONS, SCORING_MODEL],
    description="Per-feature and score drift of the day against the model's training sample and the previous seven days.",
    kinds={"scipy", "parquet"},
)

DRIFT_CHECK_SPEC = dg.AssetCheckSpec(
    DRIFT_CHECK,
    asset=DRIFT_METRICS,
    blocking=False,
    description="Warns when a day's inputs or scores drifted (see the day's drift report).",
)


def drift_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Compare the day with the references, store the table and the HTML report, and give the day a verdict."""
    day = state.day
    model = run.scored_with(state)
    columns = [c for c in model.input_columns if c not in run.domain.calendar_features]
    current, versions, sampled = _current_day(run, state, columns)
    training, prepared_training, notes = _training_reference(run, model, [*columns, SCORE_COLUMN])
    notes = list(notes) + ([sampled] if sampled else [])

    parts, references = [], {}
    if training is not None:
        references[TRAINING_REFERENCE] = training
        training_columns = [c for c in [*columns, SCORE_COLUMN] if c in training.columns]
        parts.append(compute_drift(current, prepared_training, training_columns, TRAINING_REFERENCE, DRIFT_CONFIG))
    trailing = _trailing(run, columns)
    week, used_days, week_notes = trailing.reference(day, versions)
    notes += week_notes
    for warning in trailing.warnings:
        run.context.log.warning(warning)
    if used_days:
        references[TRAILING_REFERENCE] = week
        parts.append(compute_drift(current, week, [*columns, SCORE_COLUMN], TRAILING_REFERENCE, DRIFT_CONFIG))
        notes.append(f"{TRAILING_REFERENCE}: {len(used_days)} of {TRAILING_DAYS} days ({', '.join(used_days)})")
    else:
        notes.append(f"{TRAILING_REFERENCE}: none of the previous {TRAILING_DAYS} days is in storage")
    table = pd.concat(parts, ignore_index=True) if parts else empty_drift_table()
    summary = summarize_drift(table, DRIFT_CONFIG, SCORE_COLUMN)

    report = run.store.write_side_file(
        DRIFT_REPORTS_FOLDER, day, REPORT_FILE, render_drift_report(day, table, current, references, summary, notes)
    )
    uri = run.store.write_partition(DRIFT_METRICS, day, pa.Table.from_pandas(table, preserve_index=False))
    counts = drifted_feature_counts(table)
    verdict = drift_verdict(counts, summary.score_drifted, summary.dataset_drifted)
    if summary.dataset_drifted:
        run.context.log.warning(f"{day}: {verdict}; report {report}")
    link = run.store.side_file_url(DRIFT_REPORTS_FOLDER, day, REPORT_FILE)
    metadata: dict[str, object] = {
        "row_count": len(table),
        "verdict": verdict,
        "references": dg.MetadataValue.json(list(references)),
        "dataset_drifted": summary.dataset_drifted,
        "score_drifted": summary.score_drifted,
        **{f"features_drifted_vs_{ref}": drifted for ref, (drifted, _) in counts.items()},
        **{f"features_judged_vs_{ref}": judged for ref, (_, judged) in counts.items()},
        "trailing_days": len(used_days),
        "n_reference_trailing": len(week),
        "most_drifted": dg.MetadataValue.md(drift_markdown(table)),
        "report": dg.MetadataValue.url(link) if link else dg.MetadataValue.path(report),
        "model_version": model.version,
        "uri": dg.MetadataValue.path(uri),
        # One entry, most drifted first: as numbers, the features' long keys flooded the Plots tab (alphabetically, before
        # the day's headline counts) and overlapped their values in the metadata table.
        "drift_vs_training": dg.MetadataValue.json(
            dict(sorted(feature_values(table, TRAINING_REFERENCE).items(), key=lambda item: -item[1]))
        ),
    }
    if notes:
        metadata["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in notes))
    yield run.materialization(
        DRIFT_METRICS, state, metadata, inputs=(INPUT_SNAPSHOT, PREDICTIONS, SCORING_MODEL), model_version=model.version
    )
    yield run.check(
        DRIFT_METRICS,
        DRIFT_CHECK,
        state,
        passed=not summary.dataset_drifted,
        blocking=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=verdict,
        metadata={
            "drifted_features": dg.MetadataValue.json(list(summary.drifted_features)),
            "report": dg.MetadataValue.url(link) if link else dg.MetadataValue.path(report),
        },
    )
    _trailing(run, columns).remember(day, current, versions)


def drifted_feature_counts(table: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Per reference: (features drifted, features judged), the score not counted as a feature."""
    counts = {}
    judged = table["threshold"].notna() & (table["feature"] != SCORE_COLUMN)
    for reference in dict.fromkeys(table["reference"].astype(str)):
        rows = judged & (table["reference"] == reference)
        counts[reference] = (int((rows & table["drifted"].astype(bool)).sum()), int(rows.sum()))
    return counts


def drift_verdict(counts: dict[str, tuple[int, int]], score_drifted: bool, dataset_drifted: bool) -> str:
    """One sentence that says the same thing as the numbers next to it."""
    per_reference = "; ".join(f"{d} of {j} features drifted vs {ref}" for ref, (d, j) in counts.items()) or "nothing judged"
    score = "score drifted" if score_drifted else "score stable"
    rule = f"dataset drift = score drifted or at least {DRIFT_CONFIG.dataset_drift_share:.0%} of a reference's features"
    return f"{'DATASET DRIFT' if dataset_drifted else 'no dataset drift'}: {per_reference}; {score} ({rule})"


def feature_values(table: pd.DataFrame, reference: str) -> dict[str, float]:
    """The drift statistic of each judged feature (and the score) against one reference."""
    rows = table[(table["reference"] == reference) & table["value"].notna()]
    return {str(f): round(float(v), 6) for f, v in zip(rows["feature"], rows["value"])}


def _current_day(run: PipelineRun, state: DayState, columns: Sequence[str]) -> tuple[pd.DataFrame, frozenset[str], str | None]:
    """The day's snapshot columns with its scores as column `score` (rows must line up one to one), its model
    versions, and a note when a day of more than `day_chunk_rows` rows is judged on a sample of its rows."""
    # From the frame this run holds, else the stored schema (on S3 a footer read fetches the file).
    present = state.snapshot.columns if state.snapshot is not None else run.store.column_names(INPUT_SNAPSHOT, state.day)
    lacking = [c for c in columns if c not in present]
    if lacking:
        raise DriftInputError(f"{state.day}: input_snapshot lacks column(s) {lacking} the model needs; re-materialize it")
    rows = len(state.snapshot) if state.snapshot is not None else run.store.row_count(INPUT_SNAPSHOT, state.day)
    if rows > run.day_chunk_rows:
        current, versions, seen = _streamed_sample(run.store, state.day, run.domain.id_column, columns, run.day_chunk_rows)
        note = (
            f"{state.day}: {rows:,} rows, over day_chunk_rows={run.day_chunk_rows:,}: judged on {len(current):,} of "
            f"{seen:,} rows, chosen by a hash of {run.domain.id_column} (the same rows in every run)"
        )
        return current, versions, note
    snapshot = state.snapshot if state.snapshot is not None else run.store.read_partition(INPUT_SNAPSHOT, state.day).to_pandas()
    id_column = run.domain.id_column
    scored = run.store.read_partition(PREDICTIONS, state.day, columns=[id_column, SCORE_COLUMN, "model_version"])
    ids = scored.column(id_column).to_numpy(zero_copy_only=False)
    if len(snapshot) != len(ids) or not (snapshot[id_column].to_numpy() == ids).all():
        raise DriftInputError(_misaligned(state.day, len(ids), len(snapshot), id_column))
    versions = frozenset(str(v) for v in scored.column("model_version").unique().to_pylist())
    current = snapshot.loc[:, list(columns)].assign(**{SCORE_COLUMN: scored.column(SCORE_COLUMN).to_numpy()})
    return current, versions, None


def _misaligned(day: str, scored: int, snapshot: int, id_column: str) -> str:
    return (
        f"{day}: predictions ({scored} rows) do not line up with input_snapshot ({snapshot} rows) "
        f"by {id_column}; re-materialize predictions for {day}"
    )


def _streamed_sample(
    store: PartitionedParquetStore, day: str, id_column: str, columns: Sequence[str], target: int
) -> tuple[pd.DataFrame, frozenset[str], int]:
    """About `target` rows of the day's snapshot columns with their scores, streamed (memory: the sample), the rows
    chosen by a hash of their id; with the scores' model versions and the rows seen. No predictions: scores NaN."""
    rows = store.row_count(INPUT_SNAPSHOT, day)
    every = bucket_count(rows, target)
    # Read in pieces no bigger than the sample (at least _MIN_READ_ROWS): a piece, hashed by id, costs several
    # times its rows in memory, which at _READ_ROWS was more than the sample of a small day_chunk_rows.
    read_rows = min(_READ_ROWS, max(target, _MIN_READ_ROWS))
    snapshots = store.iter_batches(INPUT_SNAPSHOT, day, batch_size=read_rows, columns=[id_column, *columns])
    scored = store.has_partition(PREDICTIONS, day)
    predictions = (
        store.iter_batches(PREDICTIONS, day, batch_size=read_rows, columns=[id_column, SCORE_COLUMN, "model_version"])
        if scored
        else None
    )
    parts, versions, seen = [], set(), 0
    for snapshot, prediction in _aligned(snapshots, predictions):
        seen += snapshot.num_rows
        if prediction is not None:
            if prediction.num_rows != snapshot.num_rows or not prediction.column(id_column).equals(snapshot.column(id_column)):
                raise DriftInputError(_misaligned(day, store.row_count(PREDICTIONS, day), rows, id_column))
            versions.update(str(v) for v in pc.unique(prediction.column("model_version")).to_pylist())
        keep = pa.array(bucket_of(snapshot.column(id_column), every) == 0)
        frame = snapshot.filter(keep).select(list(columns)).to_pandas()
        score = prediction.column(SCORE_COLUMN).filter(keep).to_numpy() if prediction is not None else np.float32("nan")
        parts.append(frame.assign(**{SCORE_COLUMN: score}))
    if prediction_rows_left(predictions):
        raise DriftInputError(_misaligned(day, store.row_count(PREDICTIONS, day), rows, id_column))
    current = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*columns, SCORE_COLUMN])
    return current, frozenset(versions), seen


def _aligned(left: Iterator[pa.RecordBatch], right: Iterator[pa.RecordBatch] | None) -> Iterator[tuple[pa.Table, pa.Table | None]]:
    """Pairs of equally long pieces of two row-aligned streams (`right` None: None beside each piece of `left`)."""
    pending = None
    for batch in left:
        piece = pa.Table.from_batches([batch])
        if right is None:
            yield piece, None
            continue
        while piece.num_rows:
            if pending is None or pending.num_rows == 0:
                pending = next(right, None)
                if pending is None:
                    yield piece, pa.table({})
                    return
                pending = pa.Table.from_batches([pending])
            take = min(piece.num_rows, pending.num_rows)
            yield piece.slice(0, take), pending.slice(0, take)
            piece, pending = piece.slice(take), pending.slice(take)


def prediction_rows_left(predictions: Iterator[pa.RecordBatch] | None) -> bool:
    """Whether a predictions stream still has rows once the snapshot's are used up."""
    return predictions is not None and any(batch.num_rows for batch in predictions)


def _training_reference(run: PipelineRun, resolved: ResolvedModel, columns: Sequence[str]):
    """The model's training sample (as loaded, and prepared for drift once per run and version), and notes on what it lacks."""
    key = f"training_reference:{resolved.pinned_uri}"
    if key not in run.cache:
        training = run.model_registry.load_reference(resolved)
        notes: list[str] = []
        if training is None:
            notes.append(
                f"model {resolved.pinned_uri} has no training reference logged "
                "(artifact reference/training_sample.parquet); compared with the trailing week only"
            )
            run.context.log.warning(notes[-1])
        else:
            lacking = [c for c in columns if c not in training.columns]
            if lacking:
                notes.append(f"training reference lacks {lacking}; those columns are compared with the trailing week only")
        prepared = None if training is None else prepare_reference(training, [c for c in columns if c in training.columns])
        run.cache[key] = (training, prepared, tuple(notes))
    return run.cache[key]


def _trailing(run: PipelineRun, columns: Sequence[str]) -> _TrailingWeek:
    key = f"trailing_week:{','.join(columns)}"
    if key not in run.cache:
        run.cache[key] = _TrailingWeek(run.store, [*columns, SCORE_COLUMN], run.domain.id_column, run.day_chunk_rows)
    return run.cache[key]


class _TrailingWeek:
    """Samples of the previous seven days' snapshots and scores, each day read once per run."""

    def __init__(self, store: PartitionedParquetStore, columns: Sequence[str], id_column: str, chunk_rows: int):
        self.store = store
        self.chunk_rows = chunk_rows
        self.columns = list(columns)
        self.id_column = id_column
        # What the last `reference` call left out that an operator should fix (shown as warnings).
        self.warnings: list[str] = []
        self._days: dict[str, tuple[pd.DataFrame, frozenset[str]] | None] = {}

    def remember(self, day: str, frame: pd.DataFrame, versions: frozenset[str]) -> None:
        """Keep the sample of a day this run just compared, for the days after it."""
        self._days[day] = (_sample(frame[self.columns], day), versions)

    def reference(self, day: str, versions: frozenset[str]) -> tuple[pd.DataFrame, list[str], list[str]]:
        """The window's rows, the days found and notes; scores of days scored by another model are left out."""
        window = [(dt.date.fromisoformat(day) - dt.timedelta(days=k)).isoformat() for k in range(TRAILING_DAYS, 0, -1)]
        for old in [d for d in self._days if d < window[0]]:
            del self._days[old]
        lacking, notes = self._lacking([d for d in window if d not in self._days], day)
        self.warnings = list(notes)
        for previous in lacking:
            self._days[previous] = None
        frames, used = [], []
        for previous in window:
            if previous not in self._days:
                self._days[previous] = self._read(previous)
            loaded = self._days[previous]
            if loaded is None:
                continue
            frame, previous_versions = loaded
            if not previous_versions:
                notes.append(f"{previous}: no predictions in storage; its scores are left out of the trailing reference")
            elif previous_versions != versions:
                # Scores of another model version would show the model change, not a change in the data.
                frame = frame.assign(**{SCORE_COLUMN: np.float32("nan")})
                notes.append(
                    f"{previous}: scored by model version(s) {sorted(previous_versions)}, not {sorted(versions)}; "
                    "its scores are left out of the trailing reference"
                )
            frames.append(frame)
            used.append(previous)
        week = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=self.columns)
        return week, used, notes

    def _lacking(self, days: Sequence[str], day: str) -> tuple[set[str], list[str]]:
        """The earlier days whose snapshot lacks a column the model reads, and one note naming them and the backfill.

        A model version that reads a new feature meets snapshots written before the feature existed: those days are
        left out of the trailing reference (the day itself is still judged against the rest), and named all at once.
        """
        features = [c for c in self.columns if c != SCORE_COLUMN]
        lacking = {}
        for previous in days:
            if self.store.has_partition(INPUT_SNAPSHOT, previous):
                missing = [c for c in features if c not in self.store.column_names(INPUT_SNAPSHOT, previous)]
                if missing:
                    lacking[previous] = missing
        if not lacking:
            return set(), []
        columns = sorted({c for missing in lacking.values() for c in missing})
        first, last = min(lacking), max(lacking)
        return set(lacking), [
            f"{day}: the trailing reference's snapshots of {len(lacking)} day(s) ({', '.join(sorted(lacking))}) lack "
            f"column(s) {columns} the model reads (written before the feature existed) and are left out; rebuild them "
            f"with dg launch --assets 'transaction_features+' --partition-range {first}...{last}"
        ]

    def _read(self, day: str) -> tuple[pd.DataFrame, frozenset[str]] | None:
        if not self.store.has_partition(INPUT_SNAPSHOT, day):
            return None
        features = [c for c in self.columns if c != SCORE_COLUMN]
        if self.store.row_count(INPUT_SNAPSHOT, day) > self.chunk_rows:
            # A day too big to read whole: a streamed sample of the same size, chosen by id hash.
            frame, versions, _ = _streamed_sample(self.store, day, self.id_column, features, TRAILING_ROWS_PER_DAY)
            return frame[self.columns], versions
        snapshot = self.store.read_partition(INPUT_SNAPSHOT, day)
        frame = snapshot.select([self.id_column, *features]).to_pandas()
        if not self.store.has_partition(PREDICTIONS, day):
            return _sample(frame.assign(**{SCORE_COLUMN: np.float32("nan")})[self.columns], day), frozenset()
        scored = self.store.read_partition(PREDICTIONS, day, columns=[self.id_column, SCORE_COLUMN, "model_version"]).to_pandas()
        merged = frame.merge(scored[[self.id_column, SCORE_COLUMN]], on=self.id_column, how="left")
        versions = frozenset(scored["model_version"].astype(str).unique())
        return _sample(merged[self.columns], day), versions


def _sample(frame: pd.DataFrame, day: str) -> pd.DataFrame:
    """At most TRAILING_ROWS_PER_DAY rows of a day, the same rows for the same day in every run."""
    if len(frame) <= TRAILING_ROWS_PER_DAY:
        return frame.reset_index(drop=True)
    rng = np.random.default_rng(int(day.replace("-", "")))
    rows = np.sort(rng.choice(len(frame), size=TRAILING_ROWS_PER_DAY, replace=False))
    return frame.iloc[rows].reset_index(drop=True)


STAGE = Stage(
    assets=(DRIFT_METRICS,),
    day=drift_day,
    specs=lambda domain: [DRIFT_METRICS_SPEC],
    checks=(DRIFT_CHECK_SPEC,),
    reads=(INPUT_SNAPSHOT, PREDICTIONS),
    code=(drift,),
    uses_model=True,
)
