"""Drift statistics of one day's data against a reference sample.

Each column in ``columns`` gives one row of ``DRIFT_COLUMNS`` (plus ``psi``). The test depends on the
column and the sample sizes (defaults of ``DriftConfig``):

- **Categorical** columns -- a non-numeric or boolean dtype, or at most ``max_categories`` (20)
  distinct values in the reference -- use the Jensen-Shannon distance, base 2 (so it lies in [0, 1]),
  between the two category frequency tables (``scipy.spatial.distance.jensenshannon``). A category
  seen on one side only counts as frequency 0 on the other. Drifted when the distance is at least
  ``js_threshold`` (0.1). No p-value.
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
from collections.abc import Sequence
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

PSI_EPSILON = 1e-4

_STRING_COLUMNS = ("feature", "reference", "statistic")
_FLOAT_COLUMNS = ("value", "p_value", "threshold", PSI_COLUMN)
_INT_COLUMNS = ("n_current", "n_reference")


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and test choices for drift detection (see the module docstring)."""

    ks_max_n: int = 5000
    ks_alpha: float = 0.01
    wasserstein_threshold: float = 0.1
    psi_bins: int = 10
    psi_threshold: float = 0.2
    max_categories: int = 20
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
) -> pd.DataFrame:
    """One drift row per column of ``columns`` comparing ``current`` with ``reference``."""
    missing = [c for c in columns if c not in current.columns or c not in reference.columns]
    if missing:
        where = {
            c: [name for name, df in (("current", current), ("reference", reference)) if c not in df.columns]
            for c in missing
        }
        raise KeyError(f"drift columns missing: {where}")
    rows = [_column_drift(current[c], reference[c], str(c), reference_name, config) for c in columns]
    return _to_frame(rows)


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
    """A markdown table of the ``top`` most drifted rows, drifted first, then by value/threshold."""
    header = "| feature | reference | statistic | value | threshold | p_value | psi | drifted |"
    rule = "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"
    if table.empty:
        return "\n".join([header, rule, "| _no rows_ | | | | | | | |"])

    value = table["value"].to_numpy(dtype=float)
    threshold = table["threshold"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(threshold > 0, value / threshold, np.nan)
    # KS is judged on its p-value, so its severity is how far the p-value falls below alpha.
    statistic = table["statistic"].astype(str).to_numpy()
    p_value = table["p_value"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ks_ratio = threshold / np.maximum(p_value, np.finfo(float).tiny)
    ratio = np.where(statistic == KS, ks_ratio, ratio)

    order = pd.DataFrame(
        {
            "drifted": table["drifted"].to_numpy(dtype=bool),
            "ratio": np.nan_to_num(ratio, nan=-np.inf),
            "pos": np.arange(len(table)),
        }
    ).sort_values(["drifted", "ratio", "pos"], ascending=[False, False, True], kind="mergesort")

    psi = (
        table[PSI_COLUMN].to_numpy(dtype=float)
        if PSI_COLUMN in table.columns
        else np.full(len(table), math.nan)
    )
    lines = [header, rule]
    for i in order["pos"].to_numpy()[:top]:
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


def _column_drift(
    current: pd.Series, reference: pd.Series, feature: str, reference_name: str, config: DriftConfig
) -> dict:
    """The drift row of one column."""
    if _is_categorical(current, reference, config):
        cur = _finite_values(current)
        ref = _finite_values(reference)
        n_cur, n_ref = len(cur), len(ref)
        value = _js_distance(cur, ref) if n_cur and n_ref else math.nan
        statistic, p_value, psi, threshold = JENSEN_SHANNON, math.nan, math.nan, config.js_threshold
        drifted = value >= threshold
    else:
        cur = np.sort(_finite_numeric(current))
        ref = np.sort(_finite_numeric(reference))
        n_cur, n_ref = len(cur), len(ref)
        n_eff = n_cur * n_ref / (n_cur + n_ref) if n_cur + n_ref else 0.0
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


def _is_categorical(current: pd.Series, reference: pd.Series, config: DriftConfig) -> bool:
    """Whether a column is judged by category frequencies rather than as a continuous value."""
    if not (_is_numeric(current) and _is_numeric(reference)):
        return True
    ref = _finite_numeric(reference)
    sample = ref if len(ref) else _finite_numeric(current)
    return len(np.unique(sample)) <= config.max_categories


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


def _js_distance(current: pd.Series, reference: pd.Series) -> float:
    """Jensen-Shannon distance (base 2) between the category frequencies of two samples."""
    cur_counts = current.value_counts(sort=False)
    ref_counts = reference.value_counts(sort=False)
    # A fixed category order keeps the floating-point sum, and so the output, reproducible.
    categories = sorted(
        set(cur_counts.index) | set(ref_counts.index), key=lambda v: (type(v).__name__, str(v))
    )
    p = cur_counts.reindex(categories, fill_value=0).to_numpy(dtype=np.float64)
    q = ref_counts.reindex(categories, fill_value=0).to_numpy(dtype=np.float64)
    return float(jensenshannon(p, q, base=2))


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
