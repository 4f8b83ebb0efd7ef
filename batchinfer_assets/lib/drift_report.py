"""A self-contained HTML drift report of one day: verdict, drift table and histograms as inline SVG.

The page has no scripts, fonts or images from elsewhere, so it opens the same from a laptop, an S3
console download or an air-gapped bastion.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from batchinfer_assets.lib.parquet_store import replace_local_text
from batchinfer_assets.lib.drift import (
    CHI_SQUARED,
    JENSEN_SHANNON,
    PSI_COLUMN,
    DriftSummary,
    drift_severity,
    severity_order,
)

CURRENT = "current"
HISTOGRAM_BINS = 30
MAX_BARS = 120
# Histogram range: the central 99% of all values, so one outlier does not squash every bar into one bin.
RANGE_QUANTILES = (0.005, 0.995)
SERIES_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b")
_CATEGORICAL_STATISTICS = frozenset({CHI_SQUARED, JENSEN_SHANNON})

_WIDTH, _HEIGHT = 560, 230
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 26, 34


def top_features(table: pd.DataFrame, top: int, always: Sequence[str] = ()) -> list[str]:
    """`always` (when present in the table) then the most drifted other features, at most `top` in all."""
    present = set(table["feature"].astype(str))
    chosen = [f for f in always if f in present]
    features = table["feature"].astype(str).to_numpy()
    for i in severity_order(table):
        if len(chosen) >= top:
            break
        if features[i] not in chosen:
            chosen.append(features[i])
    return chosen[:top]


def render_drift_report(
    day: str,
    table: pd.DataFrame,
    current: pd.DataFrame,
    references: Mapping[str, pd.DataFrame],
    summary: DriftSummary,
    notes: Sequence[str] = (),
    top: int = 6,
    always: Sequence[str] = ("score",),
) -> str:
    """The report page: verdict, notes, histograms of the top columns against every reference, the full table."""
    verdict = "DRIFTED" if summary.dataset_drifted else "no dataset drift"
    verdict_class = "bad" if summary.dataset_drifted else "ok"
    sections = []
    for feature in top_features(table, top, always):
        rows = table[table["feature"].astype(str) == feature]
        categorical = bool(rows["statistic"].astype(str).isin(_CATEGORICAL_STATISTICS).any())
        series = {CURRENT: current[feature]} if feature in current.columns else {}
        series.update({name: ref[feature] for name, ref in references.items() if feature in ref.columns})
        svg = _categorical_svg(series) if categorical else _numeric_svg(series)
        sections.append(
            f"<section><h3>{_e(feature)}</h3>{svg}{_table_html(rows, compact=True)}</section>"
        )
    notes_html = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report {_e(day)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 1200px; }}
.verdict {{ font-size: 1.3rem; font-weight: bold; padding: .4rem .8rem; display: inline-block; border-radius: 4px; }}
.ok {{ background: #e3f4e1; color: #1b5e20; }} .bad {{ background: #fde2e1; color: #b71c1c; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
section {{ border: 1px solid #ddd; border-radius: 4px; padding: .5rem; }}
table {{ border-collapse: collapse; font-size: .85rem; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th:first-child, td:first-child, td.t {{ text-align: left; }}
tr.drifted td {{ background: #fde2e1; }}
</style></head><body>
<h1>Drift report {_e(day)}</h1>
<p class="verdict {verdict_class}">{verdict}</p>
<p>{summary.drifted} of {summary.judged} judged rows drifted; score drifted: {"yes" if summary.score_drifted else "no"}.
Drifted features: {_e(", ".join(summary.drifted_features) or "none")}.
Rows per sample: current {len(current)}; {_e("; ".join(f"{k} {len(v)}" for k, v in references.items()) or "no reference")}.</p>
{f"<ul>{notes_html}</ul>" if notes_html else ""}
<h2>Most drifted columns</h2>
<p>Shares of each sample per bin (numbers) or per category, current in red.</p>
<div class="grid">{"".join(sections)}</div>
<h2>All rows</h2>
{_table_html(table, compact=False)}
</body></html>
"""


def write_report(path: Path, text: str) -> Path:
    """Write the page so that readers see the old file or the new one, never half of one."""
    return replace_local_text(path, text)


def _numeric_svg(series: Mapping[str, pd.Series]) -> str:
    """Overlaid step histograms (shares per bin) over common bins."""
    values = {name: _finite(s) for name, s in series.items()}
    pooled = np.concatenate([v for v in values.values() if len(v)] or [np.zeros(0)])
    if not len(pooled):
        return "<p>no values</p>"
    lo, hi = np.quantile(pooled, RANGE_QUANTILES)
    if lo == hi:
        lo, hi = float(pooled.min()), float(pooled.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    shares = {}
    for name, v in values.items():
        if len(v):
            counts, _ = np.histogram(np.clip(v, lo, hi), bins=edges)
            shares[name] = counts / len(v)
    y_max = max(float(s.max()) for s in shares.values()) or 1.0
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def x(v: float) -> float:
        return _LEFT + (v - lo) / (hi - lo) * plot_w

    def y(share: float) -> float:
        return _TOP + plot_h - share / y_max * plot_h

    shapes = []
    for colour, (name, share) in zip(SERIES_COLOURS, shares.items()):
        points = [(x(edges[0]), y(0.0))]
        for i, s in enumerate(share):
            points += [(x(edges[i]), y(s)), (x(edges[i + 1]), y(s))]
        points.append((x(edges[-1]), y(0.0)))
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        fill = f'fill="{colour}" fill-opacity="0.15"' if name == CURRENT else 'fill="none"'
        shapes.append(f'<polyline points="{path}" {fill} stroke="{colour}" stroke-width="1.5"/>')
    ticks = [
        f'<text x="{x(v):.1f}" y="{_HEIGHT - _BOTTOM + 14}" text-anchor="middle">{_fmt(v)}</text>'
        for v in (lo, (lo + hi) / 2, hi)
    ]
    return _svg(shapes + ticks, y_max, list(shares))


def _categorical_svg(series: Mapping[str, pd.Series]) -> str:
    """Grouped bars: each sample's share of each category."""
    counts = {name: s.dropna().value_counts(normalize=True) for name, s in series.items()}
    counts = {k: v for k, v in counts.items() if len(v)}
    if not counts:
        return "<p>no values</p>"
    if sum(len(c) for c in counts.values()) > MAX_BARS:
        return _numeric_svg(series)
    categories = sorted(set().union(*(c.index for c in counts.values())), key=lambda v: (type(v).__name__, str(v)))
    y_max = max(float(c.max()) for c in counts.values()) or 1.0
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    group_w = plot_w / len(categories)
    bar_w = group_w * 0.8 / len(counts)
    shapes = []
    for k, (colour, (name, share)) in enumerate(zip(SERIES_COLOURS, counts.items())):
        for j, category in enumerate(categories):
            s = float(share.get(category, 0.0))
            h = s / y_max * plot_h
            bx = _LEFT + j * group_w + group_w * 0.1 + k * bar_w
            shapes.append(
                f'<rect x="{bx:.1f}" y="{_TOP + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{_e(name)} {_e(category)}: {s:.4f}</title></rect>'
            )
    step = max(1, math.ceil(len(categories) / 12))
    shapes += [
        f'<text x="{_LEFT + (j + 0.5) * group_w:.1f}" y="{_HEIGHT - _BOTTOM + 14}" text-anchor="middle">'
        f"{_e(_fmt(c) if isinstance(c, (int, float)) else c)}</text>"
        for j, c in enumerate(categories)
        if j % step == 0
    ]
    return _svg(shapes, y_max, list(counts))


def _svg(shapes: list[str], y_max: float, names: list[str]) -> str:
    """Axes, the y scale, a legend and the given shapes in one inline SVG element."""
    plot_h = _HEIGHT - _TOP - _BOTTOM
    legend = [
        f'<rect x="{_LEFT + i * 120}" y="6" width="10" height="10" fill="{c}"/>'
        f'<text x="{_LEFT + i * 120 + 14}" y="15">{_e(n)}</text>'
        for i, (c, n) in enumerate(zip(SERIES_COLOURS, names))
    ]
    axes = [
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_WIDTH - _RIGHT}" y2="{_TOP + plot_h}" stroke="#444"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}" stroke="#444"/>',
        f'<text x="{_LEFT - 4}" y="{_TOP + 4}" text-anchor="end">{y_max:.3f}</text>',
        f'<text x="{_LEFT - 4}" y="{_TOP + plot_h}" text-anchor="end">0</text>',
    ]
    body = "".join(axes + shapes + legend)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-size="11" role="img">{body}</svg>'
    )


def _table_html(table: pd.DataFrame, compact: bool) -> str:
    """The drift rows as an HTML table, most severe first."""
    columns = ["reference", "statistic", "value", "threshold", "p_value", PSI_COLUMN, "severity", "drifted",
               "n_current", "n_reference"]
    if not compact:
        columns = ["feature", *columns]
    severity = drift_severity(table)
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = []
    for i in severity_order(table):
        row = table.iloc[i]
        cells = []
        for c in columns:
            if c == "severity":
                cells.append(f"<td>{_fmt(severity[i])}</td>")
            elif c == "threshold":
                cells.append(f"<td>{_fmt(row[c], none='not judged')}</td>")
            elif c in ("feature", "reference", "statistic"):
                cells.append(f'<td class="t">{_e(row[c])}</td>')
            elif c == "drifted":
                cells.append(f"<td>{'yes' if bool(row[c]) else 'no'}</td>")
            elif c in ("n_current", "n_reference"):
                cells.append(f"<td>{int(row[c])}</td>")
            else:
                cells.append(f"<td>{_fmt(row.get(c, math.nan))}</td>")
        body.append(f'<tr class="{"drifted" if bool(row["drifted"]) else ""}">{"".join(cells)}</tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _finite(s: pd.Series) -> np.ndarray:
    """A column as finite float64 values."""
    values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values[np.isfinite(values)]


def _fmt(x: object, none: str = "") -> str:
    """Four significant digits; `none` for NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return f"{float(x):.4g}"


def _e(text: object) -> str:
    """Text escaped for HTML."""
    return html.escape(str(text))
