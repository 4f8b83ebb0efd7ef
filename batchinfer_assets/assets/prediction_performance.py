"""Whether the model is still right: each scored day's predictions against the labels known so far.

Labels arrive days to weeks after a row's day, so a day is evaluated again whenever new labels land
(`prediction_performance_sensor`). Until they do, the unlabelled share is judged by an estimate from the
scores alone (CBPE, see `lib/performance.py`), which holds only for a calibrated model. The day's model
version comes from its predictions, never from the run's model: this stage loads no model, and a day scored
by an older version is judged against that version's own hold-out figure. Predictions and labels are joined on the
domain's id column; the label is the domain's label column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchinfer_assets.assets._run import DayState, PipelineRun
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.domain import Domain
from batchinfer_assets.lib import labels as labels_lib
from batchinfer_assets.lib import performance as performance_lib
from batchinfer_assets.lib.hashing import table_content_hash
from batchinfer_assets.lib.labels import DayLabels, labels_table
from batchinfer_assets.lib.model_loading import ModelNotFoundError
from batchinfer_assets.lib.performance import (
    ECE_BINS,
    ESTIMATED,
    PERFORMANCE_COLUMNS,
    REALIZED,
    estimated_metrics,
    performance_rows,
)
from batchinfer_assets.tables import PERFORMANCE_CHECK, PREDICTION_PERFORMANCE, PREDICTIONS

PERFORMANCE_SCHEMA = pa.schema(
    [
        ("model_version", pa.string()),
        ("kind", pa.string()),
        ("n_predictions", pa.int64()),
        ("n_labelled", pa.int64()),
        ("label_coverage", pa.float64()),
        *((name, pa.float64()) for name in PERFORMANCE_COLUMNS[5:]),
    ]
)
# The labels the evaluation saw, as the re-evaluation sensor compares them.
LABELS_FINGERPRINT_KEY = "labels_fingerprint"
# How many labels were read, positive, and set aside by kind (unknown ids, duplicates, contradictory, misdated).
LABEL_COUNTS_KEY = "label_counts"
# What `performance_within_floor` compared (the judged ROC AUC, the floor and what it came from, the estimate's gap).
JUDGEMENT_KEY = "judgement"

PREDICTION_PERFORMANCE_SPEC = dg.AssetSpec(
    PREDICTION_PERFORMANCE,
    deps=[PREDICTIONS],
    description=(
        "Realized performance of the day's predictions from the labels known so far, and an estimate for the "
        "unlabelled share, per model version."
    ),
    kinds={"numpy", "parquet"},
)

PERFORMANCE_CHECK_SPEC = dg.AssetCheckSpec(
    PERFORMANCE_CHECK,
    asset=PREDICTION_PERFORMANCE,
    blocking=False,
    description=(
        "Warns when a day's ROC AUC (realized, or estimated while too few positives are labelled) is below the model's "
        "hold-out ROC AUC minus the tolerance."
    ),
)


@dataclass(frozen=True)
class Judgement:
    """One model version's day against its floor."""

    model_version: str
    auc: float | None
    basis: str
    floor: float | None
    holdout: float | None
    estimate_gap: float | None

    @property
    def below(self) -> bool:
        return self.auc is not None and self.floor is not None and self.auc < self.floor

    def sentence(self) -> str:
        if self.auc is None:
            return f"version {self.model_version}: no ROC AUC to judge ({self.basis})"
        if self.floor is None:
            return f"version {self.model_version}: {self.basis} ROC AUC {self.auc:.3f}, no hold-out metric to compare against"
        against = f"hold-out {self.holdout:.3f}" if self.holdout is not None else "the configured absolute floor"
        relation = "BELOW" if self.below else "at or above"
        sentence = f"version {self.model_version}: {self.basis} ROC AUC {self.auc:.3f} {relation} floor {self.floor:.3f} ({against})"
        if self.basis.startswith(ESTIMATED) and self.estimate_gap is not None:
            # What the estimate is worth for this model, measured on the few rows already labelled.
            sentence += f"; on the rows labelled so far the estimate was off by {self.estimate_gap:+.3f}"
        return sentence


def performance_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Join the day's predictions with its known labels, store the metrics per model version, and judge them."""
    day, domain = state.day, run.domain
    predictions = run.store.read_partition(
        PREDICTIONS, day, columns=[domain.id_column, "score", "label", "model_name", "model_version"]
    )
    # Taken before the read: a file landing meanwhile changes the fingerprint, and the sensor evaluates the day again.
    fingerprint = run.labels.label_files_fingerprint(state.date, domain)
    known = run.labels.labels_for(state.date, domain)
    y, unknown_ids = join_labels(predictions.column(domain.id_column), known)

    scores = predictions.column("score").to_numpy().astype(np.float64)
    flagged = predictions.column("label").to_numpy()
    # Masks computed in Arrow: turning a million-row string column into numpy strings took 0.6 s a column.
    version_column = predictions.column("model_version")
    versions = sorted(str(v) for v in pc.unique(version_column).to_pylist())
    # The run of the registration that scored the day, as recorded: its version number may name another model now.
    scored = run.recorded_metadata(PREDICTIONS, state)
    scored_run = {str(scored["model_version"]): scored.get("model_run_id") or None} if "model_version" in scored else {}
    rows: list[dict] = []
    judgements: list[Judgement] = []
    for version in versions:
        selected = pc.equal(version_column, version)
        mine = selected.to_numpy()
        name = predictions.column("model_name").filter(selected)[0].as_py() or ""
        realized, estimated = performance_rows(version, scores[mine], flagged[mine], y[mine])
        rows += [realized, estimated]
        gap = estimate_gap(scores[mine], flagged[mine], y[mine], realized["roc_auc"])
        judgements.append(_judge(run, name, version, scored_run.get(version), realized, estimated, y[mine], gap))
    table = pa.Table.from_pylist(rows, schema=PERFORMANCE_SCHEMA)
    uri = run.store.write_partition(PREDICTION_PERFORMANCE, day, table)

    below = [j for j in judgements if j.below]
    if not judgements:
        verdict = "no predictions to judge"
    else:
        verdict = ("PERFORMANCE BELOW FLOOR: " if below else "performance within floor: ") + "; ".join(j.sentence() for j in judgements)
    latest = known.latest_labelled_at
    run.context.log.info(
        f"{day}: {int((y >= 0).sum())} of {len(y)} scored {domain.rows_name} labelled ({domain.label_column}), latest label {latest.isoformat() if latest is not None else 'none yet'}; {verdict}"
    )
    if below:
        run.context.log.warning(f"{day}: {verdict}")
    # The day's headline figures for the version that scored most rows; only they are numbers (see `_headline`).
    main = max(range(len(judgements)), key=lambda k: rows[2 * k]["n_predictions"], default=None)
    headline = _headline(rows[2 * main], judgements[main], run.performance_policy.tolerance) if main is not None else {}
    metadata: dict[str, object] = {
        **headline,
        # One entry, not nine numbers: the Plots tab draws every number, and these are flat or zero on a good day.
        LABEL_COUNTS_KEY: dg.MetadataValue.json(
            {
                "predictions": len(y),
                "labelled": int((y >= 0).sum()),
                "read": known.rows_read,
                "positives": int((y == 1).sum()),
                "unknown_ids": unknown_ids,
                "duplicates": known.duplicates,
                "contradictory": known.contradictory,
                "in_future": known.future,
                "before_day": known.before_day,
            }
        ),
        "latest_labelled_at": latest.isoformat() if latest is not None else "none yet",
        "labels_source": run.labels.location(state.date),
        LABELS_FINGERPRINT_KEY: fingerprint,
        "verdict": verdict,
        "method": calibration_note(domain),
        "model_versions": dg.MetadataValue.json(versions),
        "performance": dg.MetadataValue.md(performance_markdown(rows)),
        "uri": dg.MetadataValue.path(uri),
    }
    if unknown_ids:
        run.context.log.warning(
            f"{day}: {unknown_ids} label(s) name {domain.rows_name} that were not scored ({domain.id_column} not in the "
            "day's predictions); counted, not joined"
        )
    if known.future or known.before_day:
        run.context.log.warning(
            f"{day}: ignored {known.future} label(s) dated in the future and {known.before_day} dated before the "
            f"day of their {domain.rows_name} in {run.labels.location(state.date)}: their labelled_at is wrong; fix the "
            "labelling export"
        )
    # Re-landed labels change the content hash, so the day gets a new data version even with the same predictions.
    predictions_version = run.latest_version(PREDICTIONS, day, state) or table_content_hash(predictions)
    yield run.materialization(
        PREDICTION_PERFORMANCE,
        state,
        metadata,
        inputs=(PREDICTIONS,),
        data_version=performance_version(
            run.code_versions[PREDICTION_PERFORMANCE], predictions_version, table_content_hash(labels_table(known))
        ),
    )
    judged = headline[JUDGEMENT_KEY].value if headline else {}
    yield run.check(
        PREDICTION_PERFORMANCE,
        PERFORMANCE_CHECK,
        state,
        passed=not below,
        blocking=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=verdict,
        metadata={
            # Numbers are drawn as the check's plots, sorted by key: the judged figure first, the flat floor in `judgement`.
            **{k: v for k, v in judged.items() if k == "judged_roc_auc"},
            **{k: v for k, v in headline.items() if k in ("label_coverage", JUDGEMENT_KEY)},
            "judged_on": dg.MetadataValue.json({j.model_version: j.basis for j in judgements}),
        },
    )


def join_labels(ids: pa.ChunkedArray, known: DayLabels) -> tuple[np.ndarray, int]:
    """Each prediction's label (-1 where none is known yet), and how many labels name ids that were not scored."""
    label_ids = pa.array(known.labels[known.id_column]).cast(ids.type)
    position = pc.index_in(ids, value_set=label_ids)
    y = np.full(len(ids), -1, dtype=np.int8)
    found = position.is_valid().to_numpy(zero_copy_only=False)
    if found.any():
        truth = known.labels[known.label_column].to_numpy(dtype=np.int8)
        y[found] = truth[position.drop_null().to_numpy()]
    unknown = len(label_ids) - int(pc.sum(pc.is_in(label_ids, value_set=ids)).as_py() or 0)
    return y, unknown


def performance_version(code_version: str, predictions_version: str, labels_hash: str) -> str:
    """The data version of a day's performance: what decides its rows (code, predictions, labels known)."""
    return hashlib.sha256("\0".join((code_version, predictions_version, labels_hash)).encode()).hexdigest()[:24]


def _judge(
    run: PipelineRun,
    name: str,
    version: str,
    model_run_id: str | None,
    realized: dict,
    estimated: dict,
    y: np.ndarray,
    gap: float | None,
) -> Judgement:
    """Realized ROC AUC when enough positive and negative rows are labelled, else the estimate, against the floor."""
    policy = run.performance_policy
    try:
        holdout = run.model_registry.version_metric(name, version, policy.holdout_metric, run_id=model_run_id)
    except ModelNotFoundError as error:
        # The metrics need only the predictions and the labels: a deleted version loses its hold-out figure, not its day.
        run.context.log.warning(f"{error}: no hold-out {policy.holdout_metric} to judge against; the day's metrics are still computed")
        holdout = None
    floor = holdout - policy.tolerance if holdout is not None else policy.absolute_floor
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    if min(positives, negatives) >= policy.min_labelled_positives and realized["roc_auc"] is not None:
        return Judgement(version, realized["roc_auc"], REALIZED, floor, holdout, gap)
    basis = estimate_basis(run.domain, positives, negatives, policy.min_labelled_positives)
    return Judgement(version, estimated["roc_auc"], basis, floor, holdout, gap)


def estimate_basis(domain: Domain, positives: int, negatives: int, needed: int) -> str:
    """Why a day is judged on the estimate: too few labelled positives (or negatives) to trust its realized ROC AUC."""
    counts = ((positives, "positives", 1), (negatives, "negatives", 0))
    short = [f"{count} labelled {kind} ({domain.label_column}={value})" for count, kind, value in counts if count < needed]
    return f"{ESTIMATED} (only {' and '.join(short)}, {needed} needed)"


def calibration_note(domain: Domain) -> str:
    """How the day's figures are computed, for the materialization's metadata."""
    return (
        f"estimated = CBPE on the unlabelled rows (each score taken as P({domain.label_column}=1)): valid only if the "
        f"model is calibrated; ece over {ECE_BINS} equal-width score bins; 95% ROC AUC interval by Hanley-McNeil"
    )


def estimate_gap(scores: np.ndarray, flagged: np.ndarray, y: np.ndarray, realized_auc: float | None) -> float | None:
    """How far the estimate misses on rows whose labels are known: CBPE's ROC AUC of the labelled rows minus their realized one.

    Near 0 when the scores behave as probabilities; a steady gap says the estimate for the unlabelled rows is
    off by about as much (the demo model's is about -0.05: it is not calibrated).
    """
    labelled = y >= 0
    if realized_auc is None:
        return None
    estimated = estimated_metrics(scores[labelled], flagged[labelled]).roc_auc
    return None if estimated is None else estimated - realized_auc


def _headline(realized: dict, judgement: Judgement, tolerance: float) -> dict[str, object]:
    """The figures to follow over days as the only numbers, so the Plots tab (which draws every number, sorted by key)
    opens on `label_coverage` beside `roc_auc`; what the check compared, in one `judgement` entry.

    The other figures of every version's realized and estimated rows are in the `performance` table. A figure the
    day cannot define (e.g. no labels yet) is left out, not zero.
    """
    plotted = {name: realized[name] for name in ("roc_auc", "roc_auc_low", "roc_auc_high")}
    judged = {
        "judged_roc_auc": judgement.auc,
        "floor": judgement.floor,
        "holdout_roc_auc": judgement.holdout,
        "tolerance": tolerance,
        "estimate_gap": judgement.estimate_gap,
    }
    out: dict[str, object] = {"label_coverage": float(realized["label_coverage"])}
    out.update({k: round(float(v), 6) for k, v in plotted.items() if v is not None})
    out["model_version"] = judgement.model_version
    out[JUDGEMENT_KEY] = dg.MetadataValue.json({k: round(float(v), 6) for k, v in judged.items() if v is not None})
    return out


def performance_markdown(rows: list[dict]) -> str:
    """The day's rows as a small table for the materialization page."""
    def cell(value: object) -> str:
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    columns = ["model_version", "kind", "n_labelled", "label_coverage", "roc_auc", "roc_auc_low", "roc_auc_high", "pr_auc", "precision", "recall", "ece"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


STAGE = Stage(
    assets=(PREDICTION_PERFORMANCE,),
    day=performance_day,
    specs=lambda domain: [PREDICTION_PERFORMANCE_SPEC],
    checks=(PERFORMANCE_CHECK_SPEC,),
    reads=(PREDICTIONS,),
    code=(performance_lib, labels_lib),
    domain_declaration=True,
)
