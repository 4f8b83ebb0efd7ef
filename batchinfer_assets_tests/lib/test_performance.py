"""Performance metrics on hand-computable examples and against brute-force definitions."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchinfer_assets.lib.performance import (
    ESTIMATED,
    PERFORMANCE_COLUMNS,
    REALIZED,
    Metrics,
    MetricsAccumulator,
    VersionPerformance,
    estimated_metrics,
    expected_calibration_error,
    hanley_mcneil_interval,
    performance_rows,
    realized_metrics,
)


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Share of (positive, negative) pairs ordered correctly, ties counting one half: the definition itself."""
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _realized(y, s, predicted=None):
    y, s = np.asarray(y, float), np.asarray(s, float)
    return realized_metrics(y, s, (s >= 0.5) if predicted is None else np.asarray(predicted))


def test_perfectly_separated_scores_give_auc_and_average_precision_one():
    m = _realized([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert m.roc_auc == 1.0 and m.pr_auc == 1.0
    assert m.precision == 1.0 and m.recall == 1.0


def test_inverted_scores_give_auc_zero():
    assert _realized([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]).roc_auc == 0.0


def test_small_example_by_hand():
    # Scores 0.9 (1), 0.8 (0), 0.7 (1), 0.6 (0), 0.2 (0): of 2x3 pairs, 5 are ordered right -> 5/6.
    # Average precision: at 0.9 recall 1/2 with precision 1, at 0.7 recall 2/2 with precision 2/3 -> 5/6.
    m = _realized([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.2])
    assert m.roc_auc == pytest.approx(5 / 6)
    assert m.pr_auc == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # At 0.5 the model flags 0.9, 0.8, 0.7, 0.6: 2 true of 4 flagged, both positives found.
    assert m.precision == pytest.approx(0.5) and m.recall == 1.0
    # Bins: 0.9 -> [0.9,1) holds y=1 vs 0.9; 0.8 -> 0 vs 0.8; 0.7 -> 1 vs 0.7; 0.6 -> 0 vs 0.6; 0.2 -> 0 vs 0.2.
    assert m.ece == pytest.approx((0.1 + 0.8 + 0.3 + 0.6 + 0.2) / 5)


def test_ties_count_one_half():
    # One positive and one negative with the same score, plus a clean pair: (1 + 0.5 + 1 + 1) / 4.
    y, s = [1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]
    assert _realized(y, s).roc_auc == pytest.approx(3.5 / 4)
    # All scores tied: no information, AUC one half; average precision is the positive rate.
    m = _realized([1, 0, 0, 0], [0.3] * 4)
    assert m.roc_auc == 0.5 and m.pr_auc == pytest.approx(0.25)


def test_one_class_only_leaves_auc_and_its_interval_undefined():
    m = _realized([0, 0, 0], [0.1, 0.6, 0.3])
    assert m.roc_auc is None and m.roc_auc_low is None and m.pr_auc is None and m.recall is None
    assert m.precision == 0.0  # one row flagged, none of them positive


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=40).filter(
        lambda rows: len({y for y, _ in rows}) == 2
    )
)
def test_auc_agrees_with_the_pairwise_definition(rows):
    # Scores on a coarse grid so that ties are frequent.
    y = np.array([r[0] for r in rows], float)
    s = np.array([r[1] for r in rows], float) / 6
    assert _realized(y, s).roc_auc == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_auc_agrees_with_the_pairwise_definition_on_random_data():
    rng = np.random.default_rng(7)
    y = (rng.random(400) < 0.2).astype(float)
    s = np.round(rng.normal(y * 0.8, 1.0), 2)
    assert _realized(y, s).roc_auc == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_average_precision_agrees_with_its_definition_without_ties():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.1).astype(float)
    s = rng.random(300) + 0.3 * y
    order = np.argsort(-s)
    hits = np.cumsum(y[order])
    # Mean over positives of the precision at the rank where each positive is found.
    by_definition = np.mean([hits[k] / (k + 1) for k in range(len(s)) if y[order][k] == 1])
    assert _realized(y, s).pr_auc == pytest.approx(by_definition)


def test_calibration_error_is_zero_when_each_bin_rate_matches_its_mean_score():
    # Bin [0.2, 0.3): five rows at 0.2, one positive. Bin [0.8, 0.9): five rows at 0.8, four positives.
    y = np.array([1, 0, 0, 0, 0, 1, 1, 1, 1, 0], float)
    s = np.array([0.2] * 5 + [0.8] * 5)
    assert expected_calibration_error(y, s) == pytest.approx(0.0)
    # Score 1.0 falls into the top bin, not an eleventh one.
    assert expected_calibration_error(np.array([1.0]), np.array([1.0])) == pytest.approx(0.0)


def test_interval_narrows_with_more_positives_and_contains_the_auc():
    few = hanley_mcneil_interval(0.85, 20, 5000)
    many = hanley_mcneil_interval(0.85, 2000, 5000)
    assert few[0] < many[0] < 0.85 < many[1] < few[1]
    # By hand: A=0.85, Q1=0.85/1.15, Q2=2*0.7225/1.85, nP=20, nN=5000.
    q1, q2 = 0.85 / 1.15, 2 * 0.7225 / 1.85
    se = math.sqrt((0.85 * 0.15 + 19 * (q1 - 0.7225) + 4999 * (q2 - 0.7225)) / (20 * 5000))
    assert few == pytest.approx((0.85 - 1.959964 * se, 0.85 + 1.959964 * se), abs=1e-6)
    assert hanley_mcneil_interval(0.99, 3, 3)[1] == 1.0


def test_estimate_on_hand_example():
    # Scores 0.9 and 0.2: expected positives 1.1, negatives 0.9. At the 0.5 threshold only 0.9 is flagged:
    # expected precision 0.9, expected recall 0.9 / 1.1. Expected ROC: from (0,0) to (0.1/0.9, 0.9/1.1)
    # to (1,1), trapezoids: 0.5*(0.1/0.9)*(0.9/1.1) + (0.8/0.9)*(0.9/1.1 + 1)/2.
    m = estimated_metrics(np.array([0.9, 0.2]), np.array([1, 0]))
    assert m.precision == pytest.approx(0.9) and m.recall == pytest.approx(0.9 / 1.1)
    assert m.roc_auc == pytest.approx(0.5 * (0.1 / 0.9) * (0.9 / 1.1) + (0.8 / 0.9) * (0.9 / 1.1 + 1) / 2)
    assert m.ece is None


def test_estimate_tracks_realized_metrics_when_scores_are_calibrated():
    # Labels drawn with exactly the probability the score states: the model is calibrated by construction.
    rng = np.random.default_rng(11)
    logits = rng.normal(-3.0, 1.6, 200_000)
    p = 1 / (1 + np.exp(-logits))
    y = (rng.random(p.size) < p).astype(float)
    flagged = p >= 0.5
    realized = realized_metrics(y, p, flagged)
    estimated = estimated_metrics(p, flagged)
    # About 13,000 positives: the realized AUC's own standard error is about 0.002 and AP's a little more.
    # 0.01 allows five of those for the AUC and the rest for the estimate's own sampling noise.
    assert estimated.roc_auc == pytest.approx(realized.roc_auc, abs=0.01)
    assert estimated.pr_auc == pytest.approx(realized.pr_auc, abs=0.02)
    assert estimated.precision == pytest.approx(realized.precision, abs=0.02)
    assert estimated.recall == pytest.approx(realized.recall, abs=0.02)
    assert realized.ece < 0.01


def test_estimate_is_biased_when_scores_are_overconfident():
    rng = np.random.default_rng(12)
    p = 1 / (1 + np.exp(-rng.normal(-3.0, 1.6, 50_000)))
    y = (rng.random(p.size) < p).astype(float)
    # The same ranking, scores pushed towards the extremes: AUC unchanged, the estimate is not.
    sharp = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))
    assert realized_metrics(y, sharp, sharp >= 0.5).roc_auc == pytest.approx(realized_metrics(y, p, p >= 0.5).roc_auc)
    assert estimated_metrics(sharp, sharp >= 0.5).roc_auc > realized_metrics(y, sharp, sharp >= 0.5).roc_auc + 0.05


def test_rows_split_labelled_and_unlabelled_rows():
    scores = np.array([0.9, 0.1, 0.8, 0.3, 0.6])
    y = np.array([1, 0, -1, -1, 0])
    rows = performance_rows("3", scores, scores >= 0.5, y)
    assert [r["kind"] for r in rows] == [REALIZED, ESTIMATED]
    for row in rows:
        assert set(row) == set(PERFORMANCE_COLUMNS)
        assert (row["model_version"], row["n_predictions"], row["n_labelled"]) == ("3", 5, 3)
        assert row["label_coverage"] == pytest.approx(0.6)
    realized, estimated = rows
    # Labelled: 0.9 (1), 0.1 (0), 0.6 (0): AUC 1, precision at 0.5 = 1 of 2 flagged.
    assert realized["roc_auc"] == 1.0 and realized["precision"] == 0.5
    # Unlabelled 0.8 and 0.3: expected precision of the one flagged row is its score.
    assert estimated["precision"] == pytest.approx(0.8)


def test_fully_labelled_day_has_no_estimate():
    scores = np.array([0.9, 0.2])
    (_, estimated) = performance_rows("1", scores, scores >= 0.5, np.array([1, 0]))
    assert all(estimated[c] is None for c in ("roc_auc", "pr_auc", "precision", "recall", "ece"))


# --- the same figures from pieces of a day as from the whole day -------------------------------------------------


def _one_shot_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[float | None, float | None]:
    """(ROC AUC, average precision) as the module computed them before it accumulated: every row sorted at once,
    the curves normalized, trapezoids summed (kept here as an independent reference for the accumulator's algebra)."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    tp, fp = np.cumsum(positive[order]), np.cumsum(1.0 - positive[order])
    ends = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), ordered.size - 1] if ordered.size else np.array([], int)
    tp, fp = tp[ends], fp[ends]
    auc = ap = None
    if tp.size and tp[-1] > 0 and fp[-1] > 0:
        auc = float(np.sum(np.diff(np.r_[0.0, fp / fp[-1]]) * (np.r_[0.0, tp / tp[-1]][1:] + np.r_[0.0, tp / tp[-1]][:-1]) / 2))
    if tp.size and tp[-1] > 0:
        ap = float(np.sum(np.diff(np.r_[0.0, tp / tp[-1]]) * tp / np.maximum(tp + fp, np.finfo(np.float64).tiny)))
    return auc, ap


def _split_from_the_top(rng: np.random.Generator, scores: np.ndarray, pieces: int, ties_whole: bool) -> list[np.ndarray]:
    """Row indices in pieces, each scored at or below every earlier one, rows shuffled within a piece; with
    `ties_whole` no tied score is split between pieces, else a tie may run on into the next piece."""
    order = np.argsort(-scores, kind="stable")
    allowed = np.flatnonzero(scores[order][1:] != scores[order][:-1]) + 1 if ties_whole else np.arange(1, scores.size)
    cuts = np.sort(rng.choice(allowed, size=min(pieces - 1, allowed.size), replace=False)) if allowed.size else []
    # Empty pieces too: a bucket or a batch can hold no row of a version.
    return [rng.permutation(part) for part in np.split(order, cuts)] + [np.array([], dtype=np.int64)]


def _same(a: Metrics, b: Metrics) -> None:
    for field in dataclasses.fields(Metrics):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert (x is None) == (y is None), (field.name, x, y)
        if x is not None:
            assert x == pytest.approx(y, rel=1e-12, abs=1e-12), field.name


def _days(seed: int):
    """Random days: labels of both classes or one only, scores on coarse grids (many ties) and a few outside [0, 1]."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    grid = int(rng.choice([3, 20, 1000, 10**9]))
    scores = np.round(rng.beta(0.6, 3.0, n) * grid) / grid
    scores[rng.random(n) < 0.01] = rng.choice([-0.2, 1.3])
    kind = seed % 4
    y = {0: rng.random(n) < np.clip(scores, 0, 1), 1: np.zeros(n), 2: np.ones(n), 3: rng.random(n) < 0.3}[kind].astype(np.int8)
    return rng, scores, (scores >= 0.5).astype(np.int8), y


@pytest.mark.parametrize("ties_whole", [True, False])
@pytest.mark.parametrize("seed", range(24))
def test_metrics_fed_in_pieces_from_the_top_equal_the_one_shot_metrics(seed, ties_whole):
    rng, scores, flagged, y = _days(seed)
    for estimated in (False, True):
        accumulator = MetricsAccumulator(estimated=estimated)
        for piece in _split_from_the_top(rng, scores, int(rng.integers(1, 12)), ties_whole):
            accumulator.add(scores[piece], flagged[piece], None if estimated else y[piece])
        one_shot = estimated_metrics(scores, flagged) if estimated else realized_metrics(y, scores, flagged)
        _same(accumulator.metrics(), one_shot)
        mass = np.clip(scores, 0.0, 1.0) if estimated else y.astype(np.float64)
        reference = _one_shot_curve(np.clip(scores, 0.0, 1.0) if estimated else scores, mass)
        for got, expected in zip((one_shot.roc_auc, one_shot.pr_auc), reference):
            assert (got is None) == (expected is None) and (got is None or got == pytest.approx(expected, rel=1e-12, abs=1e-12))
    if not (y == 1).any() or not (y == 0).any():
        assert realized_metrics(y, scores, flagged).roc_auc is None


@pytest.mark.parametrize("seed", range(12))
def test_a_version_fed_in_pieces_gives_the_rows_and_the_estimate_gap_of_the_whole(seed):
    rng, scores, flagged, y = _days(seed)
    y = np.where(rng.random(y.size) < 0.4, -1, y).astype(np.int8)
    version = VersionPerformance("7")
    for piece in _split_from_the_top(rng, scores, int(rng.integers(1, 12)), ties_whole=bool(seed % 2)):
        version.add(scores[piece], flagged[piece], y[piece])
    for got, expected in zip(version.rows(), performance_rows("7", scores, flagged, y)):
        assert got.keys() == expected.keys()
        for column, value in expected.items():
            if isinstance(value, float):
                assert got[column] == pytest.approx(value, rel=1e-12, abs=1e-12), column
            else:
                assert got[column] == value, column
    labelled = y >= 0
    realized = realized_metrics(y[labelled], scores[labelled], flagged[labelled]).roc_auc
    estimated = estimated_metrics(scores[labelled], flagged[labelled]).roc_auc
    if realized is None or estimated is None:
        assert version.estimate_gap() is None
    else:
        assert version.estimate_gap() == pytest.approx(estimated - realized, rel=1e-12, abs=1e-12)


def test_a_piece_scored_above_an_earlier_one_is_refused():
    accumulator = MetricsAccumulator(estimated=False)
    accumulator.add(np.array([0.4, 0.3]), np.array([0, 0]), np.array([1, 0]))
    accumulator.add(np.array([0.3]), np.array([0]), np.array([1]))  # a tie running on is fine
    with pytest.raises(ValueError, match="from the highest score down"):
        accumulator.add(np.array([0.35]), np.array([0]), np.array([0]))


def test_a_piece_longer_than_a_walk_block_gives_the_one_shot_curve():
    # 700,000 rows are walked in several blocks of sorted scores; a grid of 0.001 puts ties across the blocks' edges.
    rng = np.random.default_rng(4)
    scores = np.round(rng.beta(0.6, 3.0, 700_000), 3)
    y = (rng.random(scores.size) < scores).astype(np.float64)
    realized, estimated = realized_metrics(y, scores, scores >= 0.5), estimated_metrics(scores, scores >= 0.5)
    for metrics, mass in ((realized, y), (estimated, scores)):
        auc, ap = _one_shot_curve(scores, mass)
        assert metrics.roc_auc == pytest.approx(auc, rel=1e-12) and metrics.pr_auc == pytest.approx(ap, rel=1e-12)
