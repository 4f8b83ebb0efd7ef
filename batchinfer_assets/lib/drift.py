"""Drift statistics of one day's data against a reference sample.

Each column in ``columns`` gives one row of ``DRIFT_COLUMNS`` (plus ``psi``). The test depends on the
column and the sample sizes (defaults of ``DriftConfig``):

- **Categorical** columns -- a non-numeric or boolean dtype, or at most ``max_categories`` (20)
  distinct values in the current and reference samples together -- are compared as category frequency tables (a category seen on
  one side only counts as frequency 0 on the other), with the same small/large split as numbers:
- **Categorical, small samples**: effective sample size (below) at most ``chi2_max_n`` (5000):
  Pearson's chi-squared test of homogeneity on the 2 x k table of counts
  (``scipy.stats.chi2_contingency``, no Yates correction). ``value`` is the chi-squared statistic,
  ``threshold`` is ``chi2_alpha`` (0.01) and the column is drifted when the p-value is below it.
- **Categorical, large samples**: the Jensen-Shannon distance, base 2 (so it lies in [0, 1]),
  between the two frequency tables (``scipy.spatial.distance.jensenshannon``). Drifted when the
  distance is at least ``js_threshold`` (0.1). No p-value: like KS, chi-squared on tens of thousands
  of rows flags differences of a fraction of a percentage point, so big samples are judged by size.
- **Numeric, small samples**: when the effective sample size ``n_current * n_reference /
  (n_current + n_reference)`` (the quantity that sets the power of the test) is at most ``ks_max_n``
  (5000), the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``). ``value`` is the KS
  statistic, ``threshold`` is ``ks_alpha`` (0.01) and the column is drifted when the p-value is
  below it.
- **Numeric, large samples**: above ``ks_max_n`` the KS test flags shifts too small to matter, so
  the Wasserstein-1 distance (``scipy.stats.wasserstein_distance``) divided by the reference's
  standard deviation (population, ddof=0; its interquartile range if the std is 0). Drifted when the
  normalised distance is at least ``wasserstein_threshold`` (0.1, a tenth of a standard deviation).
- **PSI** (population stability index, informational only, never decides ``drifted``): for numeric
  columns, over ``psi_bins`` (10) bins cut at the reference's quantiles, ``sum((c - r) * ln(c / r))``
  of the current and reference bin shares, each share floored at ``PSI_EPSILON`` (1e-4) so an empty
  bin stays finite. The usual reading is < 0.1 stable, 0.1-0.2 moderate, >= ``psi_threshold`` (0.2)
  a significant shift. Null for categorical columns.
- **Not judged**: NaN and +/-inf are dropped per column before testing and are not counted in
  ``n_current``/``n_reference``. When either side has fewer than ``min_samples`` (100) values left,
  the row still carries the statistic computed where possible, but ``threshold`` is NaN and
  ``drifted`` is False: a NaN threshold is how the table says "not judged".

``summarize_drift`` calls the day drifted when, for any single reference, at least
``dataset_drift_share`` (0.5) of the judged non-score rows drifted, or when the ``score`` row drifted
against any reference.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

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


@dataclass(frozen=True)
class DriftSummary:
    """The day's drift verdict derived from a drift table."""

    judged: int
    drifted: int
    drifted_features: tuple[str, ...]
    score_drifted: bool
    dataset_drifted: bool


def compute_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    columns: Sequence[str],
    reference_name: str,
    config: DriftConfig = DriftConfig(),
    max_workers: int | None = None,
) -> pd.DataFrame:
    """One drift row per column of ``columns`` comparing ``current`` with ``reference``."""
    missing = [c for c in columns if c not in current.columns or c not in reference.columns]
    if missing:
        where = {
            c: [name for name, df in (("current", current), ("reference", reference)) if c not in df.columns]
            for c in missing
        }
        raise KeyError(f"drift columns missing: {where}")
    def one(column: str) -> dict:
        return _column_drift(current[column], reference[column], str(column), reference_name, config)

    workers = min(len(columns), max_workers if max_workers is not None else os.cpu_count() or 1)
    if workers <= 1:
        return _to_frame([one(c) for c in columns])
    # numpy's sorts and searches release the GIL, so columns run in parallel on threads; map keeps order.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return _to_frame(list(pool.map(one, columns)))


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


def _column_drift(
    current: pd.Series, reference: pd.Series, feature: str, reference_name: str, config: DriftConfig
) -> dict:
    """The drift row of one column."""
    if _is_numeric(current) and _is_numeric(reference):
        cur = np.sort(_finite_numeric(current))
        ref = np.sort(_finite_numeric(reference))
        n_cur, n_ref = len(cur), len(ref)
        # Judged on both samples together, so a tiny reference cannot make a continuous column look categorical.
        categorical = (
            _distinct_sorted(cur) <= config.max_categories and _distinct_sorted(ref) <= config.max_categories
        )
        if categorical:
            categories, cur_counts, ref_counts = _aligned_counts(_sorted_counts(cur), _sorted_counts(ref))
            categorical = len(categories) <= config.max_categories
    else:
        categorical = True
        cur_vc = _finite_values(current).value_counts(sort=False)
        ref_vc = _finite_values(reference).value_counts(sort=False)
        n_cur, n_ref = int(cur_vc.sum()), int(ref_vc.sum())
        categories, cur_counts, ref_counts = _aligned_counts(
            (cur_vc.index.to_numpy(), cur_vc.to_numpy()), (ref_vc.index.to_numpy(), ref_vc.to_numpy())
        )
    n_eff = n_cur * n_ref / (n_cur + n_ref) if n_cur + n_ref else 0.0

    if categorical:
        psi = math.nan
        if n_eff <= config.chi2_max_n:
            statistic, threshold = CHI_SQUARED, config.chi2_alpha
            value, p_value = _chi_squared(cur_counts, ref_counts) if n_cur and n_ref else (math.nan, math.nan)
            drifted = p_value < threshold
        else:
            statistic, threshold, p_value = JENSEN_SHANNON, config.js_threshold, math.nan
            value = float(jensenshannon(cur_counts, ref_counts, base=2)) if n_cur and n_ref else math.nan
            drifted = value >= threshold
    else:
        psi = _psi(cur, ref, config.psi_bins) if n_cur and n_ref else math.nan
        if n_eff <= config.ks_max_n:
            statistic, threshold = KS, config.ks_alpha
            if n_cur and n_ref:
                res = stats.ks_2samp(cur, ref)
                value, p_value = float(res.statistic), float(res.pvalue)
            else:
                value, p_value = math.nan, math.nan
            drifted = p_value < threshold
        else:
            statistic, threshold = WASSERSTEIN, config.wasserstein_threshold
            value, p_value = _normalized_wasserstein(cur, ref), math.nan
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


def _distinct_sorted(values: np.ndarray) -> int:
    """Number of distinct values of a sorted array."""
    return int(np.count_nonzero(values[1:] != values[:-1])) + 1 if len(values) else 0


def _sorted_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs."""
    if not len(values):
        return values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return values[starts], np.diff(np.append(starts, len(values)))


def _finite_numeric(s: pd.Series) -> np.ndarray:
    """The column as float64 without NaN, null or infinite values."""
    values = s.to_numpy(dtype=np.float64, na_value=np.nan)
    return values[np.isfinite(values)]


def _finite_values(s: pd.Series) -> pd.Series:
    """The column without nulls (and without infinities when numeric)."""
    s = s.dropna()
    if _is_numeric(s):
        s = s[np.isfinite(s.to_numpy(dtype=np.float64))]
    return s


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


def _category_key(value: object) -> tuple[str, object]:
    """Sort key grouping categories by type, numbers in numeric order and anything else by text."""
    return (type(value).__name__, value if isinstance(value, (int, float)) else str(value))


def _chi_squared(current_counts: np.ndarray, reference_counts: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-squared statistic and p-value for two samples sharing one category distribution."""
    res = stats.chi2_contingency(np.vstack([current_counts, reference_counts]), correction=False)
    return float(res.statistic), float(res.pvalue)


def _normalized_wasserstein(current: np.ndarray, reference: np.ndarray) -> float:
    """Wasserstein-1 distance in units of the reference's spread (std, else IQR)."""
    distance = float(stats.wasserstein_distance(current, reference))
    scale = float(np.std(reference))
    if scale == 0.0:
        scale = float(stats.iqr(reference))
    if scale == 0.0:
        return 0.0 if distance == 0.0 else math.inf
    return distance / scale


def psi_bin_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the reference's quantiles, duplicates merged."""
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def population_stability_index(current: np.ndarray, reference: np.ndarray, bins: int) -> float:
    """PSI of ``current`` against ``reference`` on reference-quantile bins."""
    return _psi(np.asarray(current, dtype=np.float64), np.asarray(reference, dtype=np.float64), bins)


def _psi(current: np.ndarray, reference: np.ndarray, bins: int) -> float:
    """PSI over bins ``(-inf, e1), [e1, e2), ..., [ek, inf)`` cut at reference quantiles."""
    edges = psi_bin_edges(reference, bins)
    k = len(edges) + 1
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=k) / len(current)
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=k) / len(reference)
    cur = np.maximum(cur, PSI_EPSILON)
    ref = np.maximum(ref, PSI_EPSILON)
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
