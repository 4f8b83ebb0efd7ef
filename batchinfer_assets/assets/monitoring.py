"""Drift of each day's inputs and scores against the model's training sample and the trailing week.

The trailing week is read straight from storage (`table_storage`) rather than declared as a
`TimeWindowPartitionMapping(start_offset=-7, end_offset=-1)` dependency: an asset can depend on
`input_snapshot` only once, the week is optional by design (whatever of it exists is used, and
`n_reference` says how much), and a declared dependency would make every day wait for, or fail on,
seven earlier days that may never be materialized. Inside a single-run range the earlier days of the
same run come from memory, having just been loaded as this step's own input.
"""

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence

import dagster as dg
import pandas as pd

from batchinfer_assets.assets._partitions import as_date, daily_asset, record_each_day, run_days
from batchinfer_assets.lib.drift import (
    DriftInputError,
    DriftConfig,
    compute_drift,
    drift_markdown,
    empty_drift_table,
    summarize_drift,
)
from batchinfer_assets.lib.drift_report import render_drift_report
from batchinfer_assets.lib.features import CALENDAR_FEATURES
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.resources.table_storage import TableStorageResource

TRAINING_REFERENCE = "training"
TRAILING_REFERENCE = "trailing_7d"
TRAILING_DAYS = 7
SCORE_COLUMN = "score"
REPORTS_FOLDER = "drift_reports"
REPORT_FILE = "report.html"
DRIFT_CHECK = "drift_check"
DRIFT_CONFIG = DriftConfig()


@daily_asset(
    kinds={"scipy", "parquet"},
    code_version="2",
    check_specs=[
        dg.AssetCheckSpec(
            DRIFT_CHECK,
            asset="drift_metrics",
            blocking=False,
            description="Warns when a day's inputs or scores drifted (see the day's drift report).",
        )
    ],
)
def drift_metrics(
    context: dg.AssetExecutionContext,
    input_snapshot: dict[str, pd.DataFrame],
    predictions: dict[str, pd.DataFrame],
    model_registry: MlflowModelRegistryResource,
    table_storage: TableStorageResource,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Per-feature and score drift of the day against the model's training sample and the previous seven days."""
    resolved = model_registry.resolve()
    training = model_registry.load_reference(resolved)
    columns = [c for c in resolved.input_columns if c not in CALENDAR_FEATURES]
    days = run_days(context)
    own_days = {
        day: (_with_scores(input_snapshot[day], predictions[day], day), _model_versions(predictions[day]))
        for day in days
    }
    trailing = _TrailingWeek(table_storage.store, [*columns, SCORE_COLUMN], own_days)

    shared_notes = []
    if training is None:
        shared_notes.append(
            f"model {resolved.pinned_uri} has no training reference logged "
            "(artifact reference/training_sample.parquet); compared with the trailing week only"
        )
        context.log.warning(shared_notes[-1])
    training_columns = [*columns, SCORE_COLUMN]
    if training is not None:
        lacking = [c for c in training_columns if c not in training.columns]
        if lacking:
            shared_notes.append(f"training reference lacks {lacking}; those columns are compared with the trailing week only")
        training_columns = [c for c in training_columns if c in training.columns]

    tables: dict[str, pd.DataFrame] = {}
    verdicts: dict[str, dict[str, object]] = {}
    reports: dict[str, str] = {}
    for day in days:
        current, versions = own_days[day]
        notes = list(shared_notes)
        references: dict[str, pd.DataFrame] = {}
        parts = []
        if training is not None:
            references[TRAINING_REFERENCE] = training
            parts.append(compute_drift(current, training, training_columns, TRAINING_REFERENCE, DRIFT_CONFIG))
        week, used_days, week_notes = trailing.reference(day, versions)
        notes += week_notes
        if used_days:
            references[TRAILING_REFERENCE] = week
            parts.append(compute_drift(current, week, [*columns, SCORE_COLUMN], TRAILING_REFERENCE, DRIFT_CONFIG))
            notes.append(f"{TRAILING_REFERENCE}: {len(used_days)} of {TRAILING_DAYS} days ({', '.join(used_days)})")
        else:
            notes.append(f"{TRAILING_REFERENCE}: none of the previous {TRAILING_DAYS} days is in storage")
        tables[day] = pd.concat(parts, ignore_index=True) if parts else empty_drift_table()
        summary = summarize_drift(tables[day], DRIFT_CONFIG, SCORE_COLUMN)
        reports[day] = table_storage.write_side_file(
            REPORTS_FOLDER,
            day,
            REPORT_FILE,
            render_drift_report(day, tables[day], current, references, summary, notes),
        )
        verdicts[day] = {
            "drifted_features": summary.drifted,
            "judged_features": summary.judged,
            "score_drifted": summary.score_drifted,
            "dataset_drifted": summary.dataset_drifted,
            "trailing_days": len(used_days),
            "report": str(reports[day]),
        }
        if summary.dataset_drifted:
            context.log.warning(
                f"{day}: drifted ({summary.drifted} of {summary.judged} judged rows: "
                f"{', '.join(summary.drifted_features)}); report {reports[day]}"
            )

    last = days[-1]
    drifted_days = [d for d in days if verdicts[d]["dataset_drifted"]]
    metadata: dict[str, object] = {
        "references": dg.MetadataValue.json(sorted(set(tables[last]["reference"]))),
        "not_compared": dg.MetadataValue.json(sorted(set(resolved.input_columns) & set(CALENDAR_FEATURES))),
        "model_version": resolved.version,
        "drifted_features": sum(int(v["drifted_features"]) for v in verdicts.values()),
        "judged_features": sum(int(v["judged_features"]) for v in verdicts.values()),
        "dataset_drifted": bool(drifted_days),
        "verdict": f"drifted on {', '.join(drifted_days)}" if drifted_days else "no dataset drift",
        "n_reference_trailing": int(trailing.rows_used(last)),
        "most_drifted": dg.MetadataValue.md(drift_markdown(tables[last])),
        "report": dg.MetadataValue.path(str(reports[last])),
    }
    record_each_day(
        context,
        {
            day: {
                **verdicts[day],
                "row_count": len(tables[day]),
                "verdict": f"drifted on {day}" if verdicts[day]["dataset_drifted"] else "no dataset drift",
                "most_drifted": dg.MetadataValue.md(drift_markdown(tables[day])),
                "report": dg.MetadataValue.path(str(reports[day])),
                "n_reference_trailing": int(trailing.rows_used(day)),
            }
            for day in days
        },
    )
    if shared_notes:
        metadata["note"] = " ".join(shared_notes)
    yield dg.Output(tables, metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=DRIFT_CHECK,
        passed=not drifted_days,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"drifted: {', '.join(drifted_days)}" if drifted_days else f"no dataset drift on {', '.join(days)}"
        ),
        metadata={
            "drifted_days": dg.MetadataValue.json(drifted_days),
            "report": dg.MetadataValue.path(str(reports[drifted_days[-1] if drifted_days else last])),
        },
    )


def _with_scores(snapshot: pd.DataFrame, day_predictions: pd.DataFrame, day: str) -> pd.DataFrame:
    """The day's snapshot with its prediction scores as column `score` (rows must line up one to one)."""
    if len(snapshot) != len(day_predictions) or not (
        snapshot["transaction_id"].to_numpy() == day_predictions["transaction_id"].to_numpy()
    ).all():
        raise DriftInputError(
            f"{day}: predictions ({len(day_predictions)} rows) do not line up with input_snapshot "
            f"({len(snapshot)} rows) by transaction_id; re-materialize predictions for {day}"
        )
    return snapshot.assign(**{SCORE_COLUMN: day_predictions[SCORE_COLUMN].to_numpy()})


def _model_versions(day_predictions: pd.DataFrame) -> frozenset[str]:
    """The model versions that scored a day."""
    return frozenset(day_predictions["model_version"].astype(str).unique())


class _TrailingWeek:
    """The previous seven days of snapshots and scores, read once each and kept while still in a window."""

    def __init__(
        self,
        store: PartitionedParquetStore,
        columns: Sequence[str],
        own_days: Mapping[str, tuple[pd.DataFrame, frozenset[str]]],
    ):
        self.store = store
        self.columns = list(columns)
        self.own_days = own_days
        self._loaded: dict[str, tuple[pd.DataFrame, frozenset[str]] | None] = {}
        self._rows: dict[str, int] = {}

    def reference(self, day: str, versions: frozenset[str]) -> tuple[pd.DataFrame, list[str], list[str]]:
        """The window's rows, the days found and notes; scores of days scored by another model are left out."""
        window = [(as_date(day) - dt.timedelta(days=k)).isoformat() for k in range(TRAILING_DAYS, 0, -1)]
        for old in [d for d in self._loaded if d < window[0]]:
            del self._loaded[old]
        frames, used, notes = [], [], []
        for previous in window:
            loaded = self._load(previous)
            if loaded is None:
                continue
            frame, previous_versions = loaded
            if not previous_versions:
                notes.append(f"{previous}: no predictions in storage; its scores are left out of the trailing reference")
            elif previous_versions != versions:
                # Scores of another model version would show the model change, not a change in the data.
                frame = frame.assign(**{SCORE_COLUMN: float("nan")})
                notes.append(
                    f"{previous}: scored by model version(s) {sorted(previous_versions)}, not {sorted(versions)}; "
                    "its scores are left out of the trailing reference"
                )
            frames.append(frame[self.columns])
            used.append(previous)
        week = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=self.columns)
        self._rows[day] = len(week)
        return week, used, notes

    def rows_used(self, day: str) -> int:
        """Rows in the trailing reference of a day already compared."""
        return self._rows.get(day, 0)

    def _load(self, day: str) -> tuple[pd.DataFrame, frozenset[str]] | None:
        if day not in self._loaded:
            self._loaded[day] = self._read(day)
        return self._loaded[day]

    def _read(self, day: str) -> tuple[pd.DataFrame, frozenset[str]] | None:
        if day in self.own_days:
            return self.own_days[day]
        if not self.store.has_partition("input_snapshot", day):
            return None
        snapshot = self.store.read_partition("input_snapshot", day).to_pandas()
        lacking = [c for c in self.columns if c != SCORE_COLUMN and c not in snapshot.columns]
        if lacking:
            raise DriftInputError(
                f"input_snapshot dt={day} lacks column(s) {lacking} the model needs; "
                f"re-materialize input_snapshot for {day}"
            )
        if not self.store.has_partition("predictions", day):
            return snapshot.assign(**{SCORE_COLUMN: float("nan")}), frozenset()
        scored = self.store.read_partition("predictions", day, columns=["transaction_id", SCORE_COLUMN, "model_version"])
        scored = scored.to_pandas()
        merged = snapshot.merge(scored[["transaction_id", SCORE_COLUMN]], on="transaction_id", how="left")
        return merged, _model_versions(scored)
