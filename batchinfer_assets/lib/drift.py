"""Drift statistics of one day's data against a reference sample.

Each column in ``columns`` gives one row of ``DRIFT_COLUMNS`` (plus ``psi``). The test depends on the
column and the sample sizes (defaults of ``DriftConfig``). Each column is one of three kinds, decided on
the current and reference samples together:

- **Categorical**: a non-numeric or boolean dtype; a numeric column with at most two distinct values
  (a 0/1 flag); or a column named in ``categorical_columns`` (numbers that are codes, not amounts).
  Compared as category frequency tables (a category seen on one side only counts as frequency 0 on
  the other):
- **Categorical, small samples**: effective sample size (below) at most ``chi2_max_n`` (5000):
  Pearson's chi-squared test of homogeneity on the 2 x k table of counts
  (``scipy.stats.chi2_contingency``, no Yates correction). ``value`` is the chi-squared statistic,
  ``threshold`` is ``chi2_alpha`` (0.01) and the column is drifted when the p-value is below it.
- **Categorical, large samples**: the Jensen-Shannon distance, base 2 (so it lies in [0, 1]),
  between the two frequency tables (``scipy.spatial.distance.jensenshannon``). Drifted when the
  distance is at least ``js_threshold`` (0.1). No p-value: like KS, chi-squared on tens of thousands
  of rows flags differences of a fraction of a percentage point, so big samples are judged by size.
- **Ordinal**: a numeric column with 3 to ``max_categories`` (20) distinct values, e.g. a count such
  as the countries a customer paid in that day. Its values are ordered and the distance between them
  means something: moving 30% of the mass from 2 to 3 is a shift, which a category table (JS,
  chi-squared) cannot see, as it only compares the heights of the bars. So it is judged like a
  continuous column (below): KS on small samples, the normalised Wasserstein distance on large ones
  (computed from the two count tables, which gives the same number as from the raw values).
- **Continuous**: any other numeric column.
- **Numeric, small samples**: when the effective sample size ``n_current * n_reference /
  (n_current + n_reference)`` (the quantity that sets the power of the test) is at most ``ks_max_n``
  (5000), the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``). ``value`` is the KS
  statistic, ``threshold`` is ``ks_alpha`` (0.01) and the column is drifted when the p-value is
  below it.
- **Numeric, large samples**: above ``ks_max_n`` the KS test flags shifts too small to matter, so
  the Wasserstein-1 distance (the value of ``scipy.stats.wasserstein_distance``, computed here from the
  sorted samples in linear time) divided by the reference's standard deviation (population, ddof=0; its
  interquartile range if the std is 0). Drifted when the normalised distance is at least
  ``wasserstein_threshold`` (0.1, a tenth of a standard deviation).
- **PSI** (population stability index, informational only, never decides ``drifted``): for numeric
  columns (continuous and ordinal), over ``psi_bins`` (10) bins cut at the reference's quantiles,
  ``sum((c - r) * ln(c / r))`` of the current and reference bin shares, each share floored at
  ``PSI_EPSILON`` (1e-4) so an empty bin stays finite. The usual reading is < 0.1 stable, 0.1-0.2
  moderate, >= ``psi_threshold`` (0.2) a significant shift. Null for categorical columns.
- **Not judged**: NaN and +/-inf are dropped per column before testing and are not counted in
  ``n_current``/``n_reference``. When either side has fewer than ``min_samples`` (100) values left,
  the row still carries the statistic computed where possible, but ``threshold`` is NaN and
  ``drifted`` is False: a NaN threshold is how the table says "not judged".

Every statistic is computed from each column's *prepared* form: a numeric column's finite values
sorted once (one ``np.sort``; everything after it -- distinct values, Wasserstein, PSI bin counts --
is a linear pass or a handful of binary searches), a non-numeric column's category counts.
``prepare_reference`` builds that form once, so a reference compared with many days (the training
sample, each day of a range) is sorted once; ``compute_drift`` accepts it in place of a DataFrame on
either side.

``summarize_drift`` calls the day drifted when, for any single reference, at least
``dataset_drift_share`` (0.5) of the judged non-score rows drifted, or when the ``score`` row drifted
against any reference.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd

DRIFT_COLUMNS = (
    "feature",
    "reference",
    "statistic",
    "value",
    "p_value",
    "threshold",
    "drifted",
    "n_current",
    "n_reference",
)
PSI_COLUMN = "psi"
OUTPUT_COLUMNS = (*DRIFT_COLUMNS, PSI_COLUMN)

KS = "kolmogorov_smirnov"
WASSERSTEIN = "wasserstein_normalized"
JENSEN_SHANNON = "jensen_shannon"
CHI_SQUARED = "chi_squared"
# Statistics judged by their p-value (drifted when p < threshold) rather than by their value.
P_VALUE_STATISTICS = frozenset({KS, CHI_SQUARED})

PSI_EPSILON = 1e-4

_STRING_COLUMNS = ("feature", "reference", "statistic")
_FLOAT_COLUMNS = ("value", "p_value", "threshold", PSI_COLUMN)
_INT_COLUMNS = ("n_current", "n_reference")

# Column kinds (see the module docstring).
_CATEGORICAL, _ORDINAL, _CONTINUOUS = "categorical", "ordinal", "continuous"

_T = TypeVar("_T")
_R = TypeVar("_R")


class DriftInputError(ValueError):
    """The day's inputs to the drift computation do not fit together (e.g. predictions from another snapshot)."""


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and test choices for drift detection (see the module docstring)."""

    ks_max_n: int = 5000
    ks_alpha: float = 0.01
    wasserstein_threshold: float = 0.1
    psi_bins: int = 10
    psi_threshold: float = 0.2
    max_categories: int = 20
    chi2_max_n: int = 5000
    chi2_alpha: float = 0.01
    js_threshold: float = 0.1
    min_samples: int = 100
    dataset_drift_share: float = 0.5
    # Numeric columns whose values are codes (e.g. an integer merchant category code): always compared
    # as categories, however many distinct values they have.
    categorical_columns: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DriftSummary:
    """The day's drift verdict derived from a drift table."""

    judged: int
    drifted: int
    drifted_features: tuple[str, ...]
    score_drifted: bool
    dataset_drifted: bool


class PreparedColumn:
    """One column in the form every statistic is computed from.

    Numeric (non-boolean) columns keep their finite values sorted ascending in ``values`` (float32 stays
    float32, which converts to float64 exactly; everything else is float64); other columns keep
    ``categories`` and their ``counts`` (nulls dropped). ``n`` is the number of values kept.
    """

    def __init__(
        self,
        values: np.ndarray | None = None,
        categories: np.ndarray | None = None,
        counts: np.ndarray | None = None,
    ) -> None:
        if (values is None) == (categories is None or counts is None):
            raise ValueError("a prepared column has either sorted values or categories and counts")
        self.values = values
        self.categories = categories
        self.counts = counts
        self.n = len(values) if values is not None else int(np.sum(counts))
        # Computed on first use and kept, for a reference compared with many days. Two threads may both
        # compute one; they store the same value.
        self._std: float | None = None
        self._psi_reference: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_series(cls, series: pd.Series) -> PreparedColumn:
        """Sort a numeric column's finite values, or count a non-numeric column's categories."""
        if _is_numeric(series):
            return cls(values=_sorted_finite(series))
        counts = _finite_values(series).value_counts(sort=False)
        return cls(categories=counts.index.to_numpy(), counts=counts.to_numpy(dtype=np.int64))

    @property
    def numeric(self) -> bool:
        return self.values is not None

    @property
    def std(self) -> float:
        """Population standard deviation of a numeric column's values (in float64), computed once."""
        if self._std is None:
            self._std = float(np.std(_f64(self.values)))
        return self._std

    def support(self, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A numeric column's distinct values and their counts, or None past ``limit`` distinct values.

        At most ``limit + 1`` binary searches on the sorted values, so a continuous column is recognised
        without a pass over it.
        """
        values, n = self.values, self.n
        distinct, counts, start = [], [], 0
        while start < n:
            if len(distinct) >= limit:
                return None
            end = int(np.searchsorted(values, values[start], side="right"))
            distinct.append(values[start])
            counts.append(end - start)
            start = end
        return np.array(distinct, dtype=np.float64), np.array(counts, dtype=np.int64)

    def category_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Categories and counts; for a numeric column, every distinct value (a linear pass)."""
        if self.values is None:
            return self.categories, self.counts
        return _sorted_counts(_f64(self.values))

    def psi_reference(self, bins: int) -> tuple[np.ndarray, np.ndarray]:
        """Interior PSI bin edges at this column's quantiles and its bin counts (cached per ``bins``)."""
        cached = self._psi_reference.get(bins)
        if cached is None:
            values = _f64(self.values)
            edges = psi_bin_edges(values, bins)
            cached = self._psi_reference[bins] = (edges, _bin_counts(values, edges))
        return cached


class PreparedReference:
    """Prepared columns of one sample, by column name (see ``prepare_reference``)."""

    def __init__(self, columns: Mapping[str, PreparedColumn]) -> None:
        self._columns = dict(columns)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self._columns)

    def __contains__(self, column: object) -> bool:
        return column in self._columns

    def __getitem__(self, column: str) -> PreparedColumn:
        return self._columns[column]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{c}: {col.n}" for c, col in self._columns.items())
        return f"PreparedReference({sizes})"


def prepare_reference(
    reference: pd.DataFrame, columns: Sequence[str] | None = None, max_workers: int | None = None
) -> PreparedReference:
    """``reference``'s ``columns`` (all by default) prepared once, to be compared with many days.

    The result can stand for the DataFrame on either side of ``compute_drift`` and gives the same table.
    """
    columns = list(reference.columns if columns is None else columns)
    missing = [c for c in columns if c not in reference.columns]
    if missing:
        raise KeyError(f"columns missing from the reference: {missing}")
    prepared = _map(lambda c: PreparedColumn.from_series(reference[c]), columns, max_workers)
    return PreparedReference(dict(zip(columns, prepared)))


def compute_drift(
    current: pd.DataFrame | PreparedReference,
    reference: pd.DataFrame | PreparedReference,
    columns: Sequence[str],
    reference_name: str,
    config: DriftConfig = DriftConfig(),
    max_workers: int | None = None,
) -> pd.DataFrame:
    """One drift row per column of ``columns`` comparing ``current`` with ``reference``.

    Either side may be a DataFrame or a ``PreparedReference`` (``prepare_reference``), the latter to
    sort a sample compared many times only once.
    """
    missing = [c for c in columns if c not in _names(current) or c not in _names(reference)]
    if missing:
        where = {
            c: [name for name, df in (("current", current), ("reference", reference)) if c not in _names(df)]
            for c in missing
        }
        raise KeyError(f"drift columns missing: {where}")

    def one(column: str) -> dict:
        return _column_drift(
            _prepared(current, column), _prepared(reference, column), str(column), reference_name, config
        )

    return _to_frame(_map(one, columns, max_workers))


def empty_drift_table() -> pd.DataFrame:
    """A drift table with no rows and the contract's dtypes."""
    return _to_frame([])


def summarize_drift(
    table: pd.DataFrame, config: DriftConfig = DriftConfig(), score_column: str = "score"
) -> DriftSummary:
    """Count judged and drifted rows and decide whether the day as a whole drifted."""
    judged_mask = table["threshold"].notna().to_numpy(dtype=bool)
    drifted_mask = table["drifted"].to_numpy(dtype=bool) & judged_mask
    is_score = (table["feature"] == score_column).to_numpy(dtype=bool)

    drifted_features = tuple(dict.fromkeys(str(f) for f in table.loc[drifted_mask, "feature"]))
    score_drifted = bool((drifted_mask & is_score).any())

    feature_share_drifted = False
    references = table["reference"].to_numpy()
    for ref in dict.fromkeys(references):
        in_ref = (references == ref) & ~is_score & judged_mask
        judged = int(in_ref.sum())
        if judged and int((drifted_mask & in_ref).sum()) >= config.dataset_drift_share * judged:
            feature_share_drifted = True
            break

    return DriftSummary(
        judged=int(judged_mask.sum()),
        drifted=int(drifted_mask.sum()),
        drifted_features=drifted_features,
        score_drifted=score_drifted,
        dataset_drifted=score_drifted or feature_share_drifted,
    )


def drift_markdown(table: pd.DataFrame, top: int = 10) -> str:
    """A markdown table of the ``top`` most drifted rows, in ``severity_order``."""
    header = "| feature | reference | statistic | value | threshold | p_value | psi | drifted |"
    rule = "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"
    if table.empty:
        return "\n".join([header, rule, "| _no rows_ | | | | | | | |"])

    value = table["value"].to_numpy(dtype=float)
    threshold = table["threshold"].to_numpy(dtype=float)
    p_value = table["p_value"].to_numpy(dtype=float)
    order = severity_order(table)

    psi = (
        table[PSI_COLUMN].to_numpy(dtype=float)
        if PSI_COLUMN in table.columns
        else np.full(len(table), math.nan)
    )
    lines = [header, rule]
    for i in order[:top]:
        row = table.iloc[i]
        lines.append(
            "| "
            + " | ".join(
                [
                    _md(row["feature"]),
                    _md(row["reference"]),
                    _md(row["statistic"]),
                    _fmt(value[i]),
                    _fmt(threshold[i], none="not judged"),
                    _fmt(p_value[i]),
                    _fmt(psi[i]),
                    "**yes**" if bool(row["drifted"]) else "no",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def drift_severity(table: pd.DataFrame) -> np.ndarray:
    """How far each row is past its threshold (>= 1 means drifted); NaN where not judged.

    Distances are value / threshold; p-value tests are alpha / p-value, so a p-value a hundred times
    below alpha is as severe as a distance a hundred times its threshold.
    """
    value = table["value"].to_numpy(dtype=float)
    threshold = table["threshold"].to_numpy(dtype=float)
    p_value = table["p_value"].to_numpy(dtype=float)
    by_p_value = table["statistic"].astype(str).isin(P_VALUE_STATISTICS).to_numpy(dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance_ratio = np.where(threshold > 0, value / threshold, np.nan)
        p_ratio = threshold / np.maximum(p_value, np.finfo(float).tiny)
    return np.where(by_p_value, p_ratio, distance_ratio)


def severity_order(table: pd.DataFrame) -> np.ndarray:
    """Row positions, drifted rows first, then by severity, then table order (a stable ranking)."""
    order = pd.DataFrame(
        {
            "drifted": table["drifted"].to_numpy(dtype=bool),
            "severity": np.nan_to_num(drift_severity(table), nan=-np.inf),
            "pos": np.arange(len(table)),
        }
    ).sort_values(["drifted", "severity", "pos"], ascending=[False, False, True], kind="mergesort")
    return order["pos"].to_numpy()


def _names(sample: pd.DataFrame | PreparedReference) -> Collection:
    return sample if isinstance(sample, PreparedReference) else sample.columns


def _prepared(sample: pd.DataFrame | PreparedReference, column: str) -> PreparedColumn:
    if isinstance(sample, PreparedReference):
        return sample[column]
    return PreparedColumn.from_series(sample[column])


def _map(fn: Callable[[_T], _R], items: Iterable[_T], max_workers: int | None) -> list[_R]:
    """``[fn(x) for x in items]``, on threads: numpy's sorts and searches release the GIL."""
    items = list(items)
    workers = min(len(items), max_workers if max_workers is not None else os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))  # map keeps the order


def _column_drift(
    cur: PreparedColumn, ref: PreparedColumn, feature: str, reference_name: str, config: DriftConfig
) -> dict:
    """The drift row of one column."""
    n_cur, n_ref = cur.n, ref.n
    kind = _CATEGORICAL
    if not (cur.numeric and ref.numeric) or feature in config.categorical_columns:
        categories, cur_counts, ref_counts = _aligned_counts(cur.category_counts(), ref.category_counts())
    else:
        kind = _CONTINUOUS
        # Judged on both samples together, so a tiny reference cannot make a continuous column look categorical.
        cur_support, ref_support = cur.support(config.max_categories), ref.support(config.max_categories)
        if cur_support is not None and ref_support is not None:
            categories, cur_counts, ref_counts = _aligned_counts(cur_support, ref_support)
            if len(categories) <= 2:
                kind = _CATEGORICAL  # a flag: with two values, a shift is a change of shares and nothing more
            elif len(categories) <= config.max_categories:
                kind = _ORDINAL
    n_eff = n_cur * n_ref / (n_cur + n_ref) if n_cur + n_ref else 0.0

    if kind == _CATEGORICAL:
        psi = math.nan
        if n_eff <= config.chi2_max_n:
            statistic, threshold = CHI_SQUARED, config.chi2_alpha
            value, p_value = _chi_squared(cur_counts, ref_counts) if n_cur and n_ref else (math.nan, math.nan)
            drifted = p_value < threshold
        else:
            statistic, threshold, p_value = JENSEN_SHANNON, config.js_threshold, math.nan
            value = float(_scipy().spatial.distance.jensenshannon(cur_counts, ref_counts, base=2)) if n_cur and n_ref else math.nan
            drifted = value >= threshold
    else:
        psi = _psi_prepared(cur, ref, config.psi_bins) if n_cur and n_ref else math.nan
        if n_eff <= config.ks_max_n:
            # Ordinal columns too: KS compares the two CDFs along the ordered values, so it sees mass moving
            # from one value to the next, which chi-squared (blind to the order) does not. With ties its
            # p-value, computed for continuous data, is conservative: false alarms stay at or below
            # ks_alpha, at some loss of power on small samples.
            statistic, threshold = KS, config.ks_alpha
            if n_cur and n_ref:
                res = _scipy().stats.ks_2samp(_f64(cur.values), _f64(ref.values))
                value, p_value = float(res.statistic), float(res.pvalue)
            else:
                value, p_value = math.nan, math.nan
            drifted = p_value < threshold
        else:
            statistic, threshold, p_value = WASSERSTEIN, config.wasserstein_threshold, math.nan
            if kind == _ORDINAL:  # the same distance, from the count tables instead of a pass over the values
                distance = _wasserstein_counts(np.asarray(categories, dtype=np.float64), cur_counts, ref_counts)
            else:
                distance = _wasserstein_sorted(cur.values, ref.values)
            value = _normalized(distance, ref)
            drifted = value >= threshold

    if n_cur < config.min_samples or n_ref < config.min_samples:
        threshold, drifted = math.nan, False

    return {
        "feature": feature,
        "reference": reference_name,
        "statistic": statistic,
        "value": value,
        "p_value": p_value,
        "threshold": threshold,
        "drifted": bool(drifted),
        "n_current": n_cur,
        "n_reference": n_ref,
        PSI_COLUMN: psi,
    }


def _is_numeric(s: pd.Series) -> bool:
    """Whether a column holds numbers (booleans count as categories)."""
    return pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)


def _f64(values: np.ndarray) -> np.ndarray:
    """float64 values (no copy when they already are)."""
    return values.astype(np.float64, copy=False)


def _sorted_finite(s: pd.Series) -> np.ndarray:
    """The column's finite values, sorted ascending: float32 kept, anything else as float64.

    Sorted before dropping NaN and +/-inf, which the sort puts at the ends (-inf first; +inf then NaN
    last), so dropping them is a slice.
    """
    values = s.to_numpy()
    if values.dtype.kind == "f" and values.dtype.itemsize in (4, 8):
        values = np.sort(values)
    elif values.dtype.kind in "iu":
        # Sorting before the conversion gives the same array: int -> float64 never reverses an order.
        return np.sort(values).astype(np.float64)
    else:
        values = np.sort(s.to_numpy(dtype=np.float64, na_value=np.nan))
    inf = values.dtype.type(np.inf)  # a float64 key would make searchsorted cast a float32 array first
    lo = int(np.searchsorted(values, -inf, side="right"))
    hi = int(np.searchsorted(values, inf, side="left"))
    return values[lo:hi] if hi - lo < len(values) else values


def _sorted_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs."""
    if not len(values):
        return values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return values[starts], np.diff(np.append(starts, len(values)))


def _finite_values(s: pd.Series) -> pd.Series:
    """The column without nulls (and without infinities when numeric)."""
    s = s.dropna()
    if _is_numeric(s):
        s = s[np.isfinite(s.to_numpy(dtype=np.float64))]
    return s


def _object_array(items: Iterable[object]) -> np.ndarray:
    """A 1-d object array of ``items`` (never a 2-d array of tuples or a string array)."""
    items = list(items)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _aligned_counts(
    current: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray]
) -> tuple[list, np.ndarray, np.ndarray]:
    """Both samples' counts over the union of their categories (0 where a side lacks one)."""
    cur = dict(zip(current[0].tolist(), current[1].tolist()))
    ref = dict(zip(reference[0].tolist(), reference[1].tolist()))
    # A fixed category order keeps the floating-point sums, and so the output, reproducible.
    categories = sorted(set(cur) | set(ref), key=_category_key)
    return (
        categories,
        np.array([cur.get(c, 0) for c in categories], dtype=np.float64),
        np.array([ref.get(c, 0) for c in categories], dtype=np.float64),
    )


def _scipy():
    """scipy with its stats and distance modules, imported when drift is first computed.

    Imported with this module they took 0.8 s of every process that loads the code location (webserver's code
    server, daemon, each run), none of which computes drift until a run reaches the drift stage.
    """
    import scipy.spatial.distance
    import scipy.stats

    return scipy


def import_statistics_in_background() -> threading.Thread:
    """Start importing scipy on a worker thread (a run that measures drift calls this as it starts): the import then
    overlaps the day's first stages instead of adding its 0.6 s to the drift stage. `_scipy` waits for it if needed."""
    thread = threading.Thread(target=_scipy, name="scipy-import", daemon=True)
    thread.start()
    return thread


def _category_key(value: object) -> tuple[str, object]:
    """Sort key grouping categories by type, numbers in numeric order and anything else by text."""
    return (type(value).__name__, value if isinstance(value, (int, float)) else str(value))


def _chi_squared(current_counts: np.ndarray, reference_counts: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-squared statistic and p-value for two samples sharing one category distribution."""
    res = _scipy().stats.chi2_contingency(np.vstack([current_counts, reference_counts]), correction=False)
    return float(res.statistic), float(res.pvalue)


def _wasserstein_sorted(u: np.ndarray, v: np.ndarray) -> float:
    """Wasserstein-1 distance of two sorted samples (float32 or float64), in linear time.

    The same sum as ``scipy.stats.wasserstein_distance``: over the merged sample ``z``,
    ``sum(|U(z_k) - V(z_k)| * (z_{k+1} - z_k))`` with ``U``, ``V`` the two empirical CDFs, every term
    computed the same way in float64; only the order of the additions differs (a few ulps). scipy
    argsorts both samples again and binary-searches every merged value in each; here the samples are
    already sorted, so merging them is linear. Within a run of equal values the CDFs may differ from
    scipy's, but those terms are multiplied by a zero gap.
    """
    if len(u) < len(v):
        u, v = v, u  # |U - V| is symmetric
    if u.dtype != v.dtype:
        u, v = _f64(u), _f64(v)
    if 4 * len(v) < len(u):
        return _wasserstein_inserted(u, v)
    return _wasserstein_merged(u, v)


def _wasserstein_merged(u: np.ndarray, v: np.ndarray) -> float:
    """``_wasserstein_sorted`` for samples of similar sizes: one pass over the merged sample.

    A stable argsort of the two concatenated runs is a single timsort merge.
    """
    n, m = len(u), len(v)
    both = np.concatenate([u, v])
    order = np.argsort(both, kind="stable")
    merged = both[order]
    gap = np.empty(n + m - 1, dtype=np.float64)
    np.subtract(merged[1:], merged[:-1], out=gap, dtype=np.float64)
    # Elements of v among merged[:k + 1]; int32 (~40% faster than the default int64) limits a sample pair to
    # 2**31 values, far beyond what fits in memory here anyway.
    v_count = np.cumsum(order[:-1] >= n, dtype=np.int64 if n + m >= 2**31 else np.int32)
    term = np.arange(1, n + m, dtype=np.float64)
    term -= v_count
    term /= n  # U: elements of u among merged[:k + 1], over n
    term -= v_count / m
    np.abs(term, out=term)
    term *= gap
    return float(term.sum())


def _wasserstein_inserted(u: np.ndarray, v: np.ndarray) -> float:
    """``_wasserstein_sorted`` for a small ``v`` against a large ``u``: one binary search per element of v.

    The terms at the elements of u and at those of v are summed apart, so nothing of size
    ``len(u) + len(v)`` is built.
    """
    n, m = len(u), len(v)
    pos = np.searchsorted(u, v, side="right")  # v[j] follows u[pos[j] - 1] (and any equal u)
    # Terms at the elements of u: U = (i + 1) / n, V = (number of v before u[i]) / m, times the gap to
    # the next merged element: u[i + 1], or the first v inserted before it.
    term = np.arange(1, n + 1, dtype=np.float64)
    term /= n
    term -= np.repeat(np.arange(m + 1) / m, np.diff(pos, prepend=0, append=n))
    np.abs(term, out=term)
    gap = np.empty(n, dtype=np.float64)
    np.subtract(u[1:], u[:-1], out=gap[:-1], dtype=np.float64)
    gap[-1] = 0.0  # the last element of u ends the merged sample unless some v follows it (set below)
    first = np.flatnonzero(np.diff(pos, prepend=-1))  # the first v of each run inserted at one place
    first = first[pos[first] > 0]
    after = pos[first] - 1
    gap[after] = _f64(v[first]) - u[after]
    term *= gap
    total = float(term.sum())
    # Terms at the elements of v: U = pos[j] / n, V = (j + 1) / m, times the gap to the next v of the
    # same run, else to u[pos[j]] (none after the last merged element).
    v64 = _f64(v)
    gap_v = np.empty(m, dtype=np.float64)
    gap_v[:-1] = np.where(pos[1:] == pos[:-1], v64[1:], u[np.minimum(pos[:-1], n - 1)])
    gap_v[-1] = u[pos[-1]] if pos[-1] < n else v64[-1]
    gap_v -= v64
    term_v = pos / n
    term_v -= np.arange(1, m + 1) / m
    np.abs(term_v, out=term_v)
    term_v *= gap_v
    return total + float(term_v.sum())


def _wasserstein_counts(values: np.ndarray, current_counts: np.ndarray, reference_counts: np.ndarray) -> float:
    """Wasserstein-1 distance of two samples given as counts over the same ascending distinct ``values``."""
    cur_cdf = np.cumsum(current_counts)[:-1] / np.sum(current_counts)
    ref_cdf = np.cumsum(reference_counts)[:-1] / np.sum(reference_counts)
    return float(np.sum(np.abs(cur_cdf - ref_cdf) * np.diff(values)))


def _normalized(distance: float, reference: PreparedColumn) -> float:
    """A distance in units of the reference's spread (std, else IQR)."""
    scale = reference.std
    if scale == 0.0:
        scale = float(_scipy().stats.iqr(_f64(reference.values)))
    if scale == 0.0:
        return 0.0 if distance == 0.0 else math.inf
    return distance / scale


def psi_bin_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the reference's quantiles, duplicates merged."""
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def population_stability_index(current: np.ndarray, reference: np.ndarray, bins: int) -> float:
    """PSI of ``current`` against ``reference`` on reference-quantile bins."""
    cur = np.sort(np.asarray(current, dtype=np.float64))
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    edges = psi_bin_edges(ref, bins)
    return _psi_from_counts(_bin_counts(cur, edges), _bin_counts(ref, edges))


def _bin_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in bins ``(-inf, e1), [e1, e2), ..., [ek, inf)`` of a sorted sample: k binary searches."""
    below = _count_below(sorted_values, edges)
    return np.diff(np.concatenate([[0], below, [len(sorted_values)]]))


def _count_below(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many values are ``< edge`` for each float64 edge, without casting float32 values to float64.

    A float32 value ``x`` is below a float64 edge ``e`` exactly when it is below ``e`` rounded to float32
    if that rounding went up (or was exact), and at most the rounded edge if it went down: no float32
    lies strictly between ``e`` and its rounding.
    """
    if sorted_values.dtype != np.float32:
        return np.searchsorted(sorted_values, _f64(edges), side="left")
    with np.errstate(over="ignore"):
        rounded = edges.astype(np.float32)
    left = np.searchsorted(sorted_values, rounded, side="left")
    right = np.searchsorted(sorted_values, rounded, side="right")
    return np.where(rounded.astype(np.float64) >= edges, left, right)


def _psi_prepared(current: PreparedColumn, reference: PreparedColumn, bins: int) -> float:
    edges, ref_counts = reference.psi_reference(bins)
    return _psi_from_counts(_bin_counts(current.values, edges), ref_counts)


def _psi_from_counts(current_counts: np.ndarray, reference_counts: np.ndarray) -> float:
    """PSI of two samples' counts over the same bins, shares floored at ``PSI_EPSILON``."""
    cur = np.maximum(current_counts / np.sum(current_counts), PSI_EPSILON)
    ref = np.maximum(reference_counts / np.sum(reference_counts), PSI_EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _to_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with the contract's column order and dtypes."""
    data = {}
    for col in OUTPUT_COLUMNS:
        values = [r[col] for r in rows]
        if col in _STRING_COLUMNS:
            data[col] = pd.Series(values, dtype="str")
        elif col in _FLOAT_COLUMNS:
            data[col] = pd.Series(values, dtype="float64")
        elif col in _INT_COLUMNS:
            data[col] = pd.Series(values, dtype="int64")
        else:
            data[col] = pd.Series(values, dtype="bool")
    return pd.DataFrame(data, columns=list(OUTPUT_COLUMNS))


def _fmt(x: float, none: str = "") -> str:
    """A float for markdown: four significant digits, blank (or ``none``) when NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return f"{x:.4g}"


def _md(text: object) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|")
