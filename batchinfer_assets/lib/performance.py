"""How good a day's predictions were: realized metrics from labels, and estimates from the scores alone.

Realized metrics judge the labelled rows against their labels. Estimated metrics judge the unlabelled rows
the way NannyML's CBPE (confidence-based performance estimation) does: each score is taken as the
probability that the row is positive, so a row counts as `score` of a positive and `1 - score` of a
negative, and every metric is computed from those expected counts. The estimate is only as good as the
model's calibration: on a model whose scores are not probabilities (over- or under-confident) it is biased,
and the realized metrics, once labels land, are the ones to trust.

All curves are built once from the scores sorted in descending order with tied scores grouped, so a tie
counts as half a correctly ordered pair (the Mann-Whitney convention): the ROC AUC here equals the
rank-sum formula with average ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REALIZED = "realized"
ESTIMATED = "estimated"
# Expected calibration error over equal-width score bins [0, 0.1), [0.1, 0.2), ... [0.9, 1.0].
ECE_BINS = 10
# Two-sided 95% normal quantile for the ROC AUC interval.
Z_95 = 1.959963984540054

PERFORMANCE_COLUMNS: tuple[str, ...] = (
    "model_version",
    "kind",
    "n_predictions",
    "n_labelled",
    "label_coverage",
    "roc_auc",
    "pr_auc",
    "precision",
    "recall",
    "ece",
    "roc_auc_low",
    "roc_auc_high",
)


@dataclass(frozen=True)
class Metrics:
    """Metrics of one set of rows; None where the rows cannot define the metric (e.g. one class only)."""

    roc_auc: float | None
    pr_auc: float | None
    precision: float | None
    recall: float | None
    ece: float | None
    roc_auc_low: float | None
    roc_auc_high: float | None
    positives: float
    negatives: float


def _curve(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative positive and negative mass at each distinct score, from the highest score down."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    tp = np.cumsum(positive[order], dtype=np.float64)
    fp = np.cumsum(negative[order], dtype=np.float64)
    # The last row of each run of equal scores: a threshold cannot split tied rows.
    ends = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), ordered.size - 1] if ordered.size else np.array([], int)
    return tp[ends], fp[ends]


def roc_auc_from_mass(tp: np.ndarray, fp: np.ndarray) -> float | None:
    """Area under the (expected) ROC curve by the trapezoid rule; None without both classes."""
    if tp.size == 0 or tp[-1] <= 0 or fp[-1] <= 0:
        return None
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision_from_mass(tp: np.ndarray, fp: np.ndarray) -> float | None:
    """PR AUC as average precision: the precision at each threshold weighted by the recall it adds."""
    if tp.size == 0 or tp[-1] <= 0:
        return None
    recall = tp / tp[-1]
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).tiny)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def hanley_mcneil_interval(auc: float | None, positives: float, negatives: float) -> tuple[float | None, float | None]:
    """95% interval of a ROC AUC (Hanley & McNeil 1982), clipped to [0, 1].

    Analytic rather than bootstrapped: it costs nothing on a million rows, and its width is driven by the
    number of positives, which is what makes a fraud AUC uncertain (a day with 40 labelled frauds gets a
    wide interval however many legitimate rows it has). It assumes roughly exponential score distributions
    per class and is slightly conservative for AUCs near 1.
    """
    if auc is None or positives < 1 or negatives < 1:
        return None, None
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    half = Z_95 * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """Share-weighted mean gap between the observed positive rate and the mean score, over equal-width bins."""
    if y.size == 0:
        return None
    index = np.minimum((scores * bins).astype(np.int64), bins - 1).clip(0)
    observed = np.bincount(index, weights=y.astype(np.float64), minlength=bins)
    predicted = np.bincount(index, weights=scores.astype(np.float64), minlength=bins)
    return float(np.abs(observed - predicted).sum() / y.size)


def _at_threshold(tp: float, fp: float, positives: float) -> tuple[float | None, float | None]:
    precision = tp / (tp + fp) if tp + fp > 0 else None
    recall = tp / positives if positives > 0 else None
    return precision, recall


def realized_metrics(y: np.ndarray, scores: np.ndarray, predicted: np.ndarray) -> Metrics:
    """Metrics of labelled rows: `y` the labels (0/1), `predicted` the model's 0/1 label at its threshold."""
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    return _metrics(scores, y, predicted, ece=expected_calibration_error(y, scores))


def estimated_metrics(scores: np.ndarray, predicted: np.ndarray) -> Metrics:
    """CBPE: the metrics the rows would have if each score were the true probability of a positive.

    Calibration error is None: under that assumption it is zero by construction, so it cannot be estimated.
    The interval is Hanley-McNeil's with the expected numbers of positives and negatives: the spread the
    realized AUC would have if the model is calibrated, not an allowance for miscalibration.
    """
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    return _metrics(p, p, predicted, ece=None)


def _metrics(scores: np.ndarray, positive_mass: np.ndarray, predicted: np.ndarray, ece: float | None) -> Metrics:
    """The metrics of rows each counting `positive_mass` as a positive and the rest as a negative (a 0/1 label
    when realized, the score itself when estimated)."""
    flagged = np.asarray(predicted).astype(bool)
    tp, fp = _curve(scores, positive_mass, 1.0 - positive_mass)
    auc = roc_auc_from_mass(tp, fp)
    positives = float(positive_mass.sum())
    negatives = float(positive_mass.size - positives)
    precision, recall = _at_threshold(float(positive_mass[flagged].sum()), float((1.0 - positive_mass[flagged]).sum()), positives)
    low, high = hanley_mcneil_interval(auc, positives, negatives)
    return Metrics(
        roc_auc=auc,
        pr_auc=average_precision_from_mass(tp, fp),
        precision=precision,
        recall=recall,
        ece=ece,
        roc_auc_low=low,
        roc_auc_high=high,
        positives=positives,
        negatives=negatives,
    )


def performance_rows(model_version: str, scores: np.ndarray, predicted: np.ndarray, y: np.ndarray) -> list[dict]:
    """The contract's two rows for one model version's predictions of a day.

    `y` holds each row's label, or -1 where no label is known yet. Both rows carry the version's
    `n_predictions`, `n_labelled` and `label_coverage`; `realized` is measured on the labelled rows,
    `estimated` on the unlabelled ones (all metrics None when there are none).
    """
    y = np.asarray(y)
    labelled = y >= 0
    n = int(y.size)
    n_labelled = int(labelled.sum())
    common = {
        "model_version": model_version,
        "n_predictions": n,
        "n_labelled": n_labelled,
        "label_coverage": n_labelled / n if n else 0.0,
    }
    realized = realized_metrics(y[labelled], scores[labelled], predicted[labelled])
    estimated = estimated_metrics(scores[~labelled], predicted[~labelled])
    return [
        {**common, "kind": REALIZED, **metric_fields(realized)},
        {**common, "kind": ESTIMATED, **metric_fields(estimated)},
    ]


def metric_fields(metrics: Metrics) -> dict[str, float | None]:
    """The metric columns of a row."""
    return {
        "roc_auc": metrics.roc_auc,
        "pr_auc": metrics.pr_auc,
        "precision": metrics.precision,
        "recall": metrics.recall,
        "ece": metrics.ece,
        "roc_auc_low": metrics.roc_auc_low,
        "roc_auc_high": metrics.roc_auc_high,
    }
