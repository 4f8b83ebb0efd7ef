"""How good a day's predictions were: realized metrics from labels, and estimates from the scores alone.

Realized metrics judge the labelled rows against their labels. Estimated metrics judge the unlabelled rows
the way NannyML's CBPE (confidence-based performance estimation) does: each score is taken as the
probability that the row is positive, so a row counts as `score` of a positive and `1 - score` of a
negative, and every metric is computed from those expected counts. The estimate is only as good as the
model's calibration: on a model whose scores are not probabilities (over- or under-confident) it is biased,
and the realized metrics, once labels land, are the ones to trust.

All curves are built from the scores in descending order with tied scores grouped, so a tie counts as half a
correctly ordered pair (the Mann-Whitney convention): the ROC AUC here equals the rank-sum formula with average
ranks. They are reduced to sums as the rows pass, so a day too big for memory is measured exactly from pieces of
it fed from the highest score range down (`MetricsAccumulator`); a day in memory is one piece.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REALIZED = "realized"
ESTIMATED = "estimated"
# Expected calibration error over equal-width score bins [0, 0.1), [0.1, 0.2), ... [0.9, 1.0].
ECE_BINS = 10
# Rows of sorted scores turned into curve steps at a time.
_WALK_ROWS = 1 << 18
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


class _RankedCurve:
    """The (expected) ROC and precision-recall curves of rows fed in pieces from the highest score down, reduced as they
    grow to their unnormalized areas: memory stays that of one piece however many rows pass.

    A step of the curves ends at each distinct score (a threshold cannot split tied rows); the step still open at the
    end of a piece may go on in the next one, so pieces need only come in order of score, ties may span them. With
    tp_i, fp_i the cumulative positive and negative mass at the end of step i (tp_0 = fp_0 = 0), TP and FP the totals:
    ROC AUC = sum((fp_i - fp_{i-1}) * (tp_i + tp_{i-1})) / (2 TP FP), the trapezoids over tp/TP against fp/FP; average
    precision = sum((tp_i - tp_{i-1}) * tp_i / (tp_i + fp_i)) / TP, each step's precision weighted by the recall it adds.
    """

    def __init__(self) -> None:
        self.tp = self.fp = 0.0  # mass at the end of the last closed step
        self.open_tp = self.open_fp = 0.0  # mass with the open step's rows
        self.open_score: float | None = None
        self.area2 = 0.0
        self.precision_sum = 0.0
        self.steps = 0

    def add(self, scores: np.ndarray, positive: np.ndarray) -> None:
        """The next rows, none scored above a row added before: `positive` the positive mass of each, 1 - it the negative."""
        if scores.size == 0:
            return
        order = np.argsort(-scores, kind="stable")
        ordered = scores[order]
        if self.open_score is not None and ordered[0] > self.open_score:
            raise ValueError(f"rows scored up to {ordered[0]} added after rows scored {self.open_score}: feed pieces from the highest score down")
        mass = positive[order]
        del order
        # Walked in blocks, so the running sums' arrays stay small however big the piece.
        for start in range(0, ordered.size, _WALK_ROWS):
            self._walk(ordered[start : start + _WALK_ROWS], mass[start : start + _WALK_ROWS])

    def _walk(self, ordered: np.ndarray, mass: np.ndarray) -> None:
        """Rows already in descending order of score, the first not above the open step's score."""
        # Started from the carried mass, the running sums are those of one cumulative sum over every row so far.
        tp = np.cumsum(np.r_[self.open_tp, mass])[1:]
        fp = np.cumsum(np.r_[self.open_fp, 1.0 - mass])[1:]
        ends = np.flatnonzero(ordered[1:] != ordered[:-1])
        closed_tp, closed_fp = tp[ends], fp[ends]
        if self.open_score is not None and ordered[0] != self.open_score:
            closed_tp, closed_fp = np.r_[self.open_tp, closed_tp], np.r_[self.open_fp, closed_fp]
        self._close(closed_tp, closed_fp)
        self.open_tp, self.open_fp, self.open_score = float(tp[-1]), float(fp[-1]), float(ordered[-1])

    def _close(self, tp: np.ndarray, fp: np.ndarray) -> None:
        if tp.size == 0:
            return
        area2, precision_sum = _step_sums(self.tp, self.fp, tp, fp)
        self.area2 += area2
        self.precision_sum += precision_sum
        self.tp, self.fp = float(tp[-1]), float(fp[-1])
        self.steps += tp.size

    def _totals(self) -> tuple[int, float, float, float, float]:
        """(steps, TP, FP, area2, precision sum) with the open step closed (the curve itself stays open for more rows)."""
        if self.open_score is None:
            return 0, 0.0, 0.0, 0.0, 0.0
        area2, precision_sum = _step_sums(self.tp, self.fp, np.array([self.open_tp]), np.array([self.open_fp]))
        return self.steps + 1, self.open_tp, self.open_fp, self.area2 + area2, self.precision_sum + precision_sum

    def roc_auc(self) -> float | None:
        """Area under the (expected) ROC curve by the trapezoid rule; None without both classes."""
        steps, tp, fp, area2, _ = self._totals()
        if steps == 0 or tp <= 0 or fp <= 0:
            return None
        return float(area2 / (2.0 * tp * fp))

    def average_precision(self) -> float | None:
        """PR AUC as average precision: the precision at each threshold weighted by the recall it adds."""
        steps, tp, _, _, precision_sum = self._totals()
        if steps == 0 or tp <= 0:
            return None
        return float(precision_sum / tp)


def _step_sums(tp0: float, fp0: float, tp: np.ndarray, fp: np.ndarray) -> tuple[float, float]:
    """The ROC area (doubled, unnormalized) and the average-precision sum that the steps ending at (tp, fp) add after (tp0, fp0)."""
    before_tp, before_fp = np.r_[tp0, tp[:-1]], np.r_[fp0, fp[:-1]]
    area2 = float(np.sum((fp - before_fp) * (tp + before_tp)))
    precision_sum = float(np.sum((tp - before_tp) * tp / np.maximum(tp + fp, np.finfo(np.float64).tiny)))
    return area2, precision_sum


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
    observed, predicted = _calibration_bins(np.asarray(y, dtype=np.float64), np.asarray(scores, dtype=np.float64), bins)
    return float(np.abs(observed - predicted).sum() / y.size)


def _calibration_bins(y: np.ndarray, scores: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per equal-width score bin: the positives observed and the sum of the scores."""
    index = np.minimum((scores * bins).astype(np.int64), bins - 1).clip(0)
    return np.bincount(index, weights=y, minlength=bins), np.bincount(index, weights=scores, minlength=bins)


def _at_threshold(tp: float, fp: float, positives: float) -> tuple[float | None, float | None]:
    precision = tp / (tp + fp) if tp + fp > 0 else None
    recall = tp / positives if positives > 0 else None
    return precision, recall


class MetricsAccumulator:
    """The metrics of a set of rows fed in pieces, each piece scored at or below every earlier one (exact: the same
    figures as the rows in one piece); realized from 0/1 labels, or estimated (CBPE) from the scores alone."""

    def __init__(self, estimated: bool) -> None:
        self.estimated = estimated
        self._curve = _RankedCurve()
        self.rows = 0
        self.positives = 0.0
        self._flagged_positive = 0.0
        self._flagged_negative = 0.0
        self._observed = np.zeros(ECE_BINS)
        self._predicted = np.zeros(ECE_BINS)

    def add(self, scores: np.ndarray, predicted: np.ndarray, y: np.ndarray | None = None) -> None:
        """The next rows: their scores, the model's 0/1 label at its threshold, and (realized) their 0/1 labels."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.estimated:
            scores = np.clip(scores, 0.0, 1.0)
            mass = scores
        else:
            mass = np.asarray(y, dtype=np.float64)
            observed, predicted_sum = _calibration_bins(mass, scores, ECE_BINS)
            self._observed += observed
            self._predicted += predicted_sum
        flagged = np.asarray(predicted).astype(bool)
        self._curve.add(scores, mass)
        self.rows += int(mass.size)
        self.positives += float(mass.sum())
        self._flagged_positive += float(mass[flagged].sum())
        self._flagged_negative += float((1.0 - mass[flagged]).sum())

    @property
    def negatives(self) -> float:
        return self.rows - self.positives

    def metrics(self) -> Metrics:
        """The metrics of every row added so far."""
        auc = self._curve.roc_auc()
        precision, recall = _at_threshold(self._flagged_positive, self._flagged_negative, self.positives)
        low, high = hanley_mcneil_interval(auc, self.positives, self.negatives)
        ece = None if self.estimated or not self.rows else float(np.abs(self._observed - self._predicted).sum() / self.rows)
        return Metrics(
            roc_auc=auc,
            pr_auc=self._curve.average_precision(),
            precision=precision,
            recall=recall,
            ece=ece,
            roc_auc_low=low,
            roc_auc_high=high,
            positives=self.positives,
            negatives=self.negatives,
        )


def realized_metrics(y: np.ndarray, scores: np.ndarray, predicted: np.ndarray) -> Metrics:
    """Metrics of labelled rows: `y` the labels (0/1), `predicted` the model's 0/1 label at its threshold."""
    accumulator = MetricsAccumulator(estimated=False)
    accumulator.add(scores, predicted, y)
    return accumulator.metrics()


def estimated_metrics(scores: np.ndarray, predicted: np.ndarray) -> Metrics:
    """CBPE: the metrics the rows would have if each score were the true probability of a positive.

    Calibration error is None: under that assumption it is zero by construction, so it cannot be estimated.
    The interval is Hanley-McNeil's with the expected numbers of positives and negatives: the spread the
    realized AUC would have if the model is calibrated, not an allowance for miscalibration.
    """
    accumulator = MetricsAccumulator(estimated=True)
    accumulator.add(scores, predicted)
    return accumulator.metrics()


class VersionPerformance:
    """One model version's rows of a day, fed in pieces from the highest score down: its two rows and the estimate's gap."""

    def __init__(self, model_version: str) -> None:
        self.model_version = model_version
        self.realized = MetricsAccumulator(estimated=False)
        self.estimated = MetricsAccumulator(estimated=True)
        # CBPE on the labelled rows, to be compared with what their labels say.
        self.labelled_estimate = MetricsAccumulator(estimated=True)

    def add(self, scores: np.ndarray, predicted: np.ndarray, y: np.ndarray) -> None:
        """The next rows; `y` holds each row's label, or -1 where no label is known yet."""
        y = np.asarray(y)
        labelled = y >= 0
        self.realized.add(scores[labelled], predicted[labelled], y[labelled])
        self.estimated.add(scores[~labelled], predicted[~labelled])
        self.labelled_estimate.add(scores[labelled], predicted[labelled])

    def rows(self) -> list[dict]:
        """The contract's two rows: both carry the version's `n_predictions`, `n_labelled` and `label_coverage`;
        `realized` is measured on the labelled rows, `estimated` on the unlabelled ones (all metrics None when there are none)."""
        n_labelled = self.realized.rows
        n = n_labelled + self.estimated.rows
        common = {
            "model_version": self.model_version,
            "n_predictions": n,
            "n_labelled": n_labelled,
            "label_coverage": n_labelled / n if n else 0.0,
        }
        return [
            {**common, "kind": REALIZED, **metric_fields(self.realized.metrics())},
            {**common, "kind": ESTIMATED, **metric_fields(self.estimated.metrics())},
        ]

    def estimate_gap(self) -> float | None:
        """How far the estimate misses on rows whose labels are known: CBPE's ROC AUC of the labelled rows minus their realized one.

        Near 0 when the scores behave as probabilities; a steady gap says the estimate for the unlabelled rows is
        off by about as much (the demo model's is about -0.05: it is not calibrated).
        """
        realized = self.realized.metrics().roc_auc
        estimated = self.labelled_estimate.metrics().roc_auc
        return None if realized is None or estimated is None else estimated - realized


def performance_rows(model_version: str, scores: np.ndarray, predicted: np.ndarray, y: np.ndarray) -> list[dict]:
    """The contract's two rows for one model version's predictions of a day (`y`: each row's label, -1 where unknown)."""
    version = VersionPerformance(model_version)
    version.add(np.asarray(scores), np.asarray(predicted), y)
    return version.rows()


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
