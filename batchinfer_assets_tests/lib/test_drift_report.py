import re

import numpy as np
import pandas as pd

from batchinfer_assets.lib.drift import compute_drift, summarize_drift
from batchinfer_assets.lib.drift_report import render_drift_report, top_features, write_report


def _samples(seed=0, n=3000, shift=0.0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "calm": rng.normal(0.0, 1.0, n),
            "moved": rng.normal(shift, 1.0, n),
            "channel": rng.choice(["pos", "online", "atm"], n, p=[0.6, 0.3, 0.1]),
            "score": rng.beta(1.0, 20.0, n),
        }
    )


def _report(tmp_path=None):
    current, reference = _samples(1, shift=1.0), _samples(2)
    table = compute_drift(current, reference, list(current.columns), "training")
    page = render_drift_report(
        "2025-09-01", table, current, {"training": reference}, summarize_drift(table), notes=["a <note>"], top=3
    )
    return table, page


def test_top_features_puts_score_first_then_most_drifted():
    table, _ = _report()
    assert top_features(table, 2, always=("score",)) == ["score", "moved"]
    assert len(top_features(table, 10)) == 4
    assert top_features(table, 1) == ["moved"]


def test_report_is_self_contained_html_with_a_histogram_per_top_column():
    table, page = _report()
    assert page.startswith("<!DOCTYPE html>")
    assert "Drift report 2025-09-01" in page
    # No scripts, stylesheets or images fetched from anywhere: it opens offline.
    assert not re.search(r"<script|<link|<img|src=|@import|url\(", page)
    assert re.findall(r"https?://[^\"']+", page) == ["http://www.w3.org/2000/svg"] * page.count("<svg")
    assert page.count("<svg") == 3
    assert "a &lt;note&gt;" in page
    assert "<h3>moved</h3>" in page and "<h3>score</h3>" in page
    # Each top column's rows under its histogram, then every row once in the full table.
    assert page.count('<td class="t">training</td>') == 3 + len(table)


def test_categorical_column_is_drawn_as_bars_per_category():
    current, reference = _samples(1), _samples(2)
    current["channel"] = np.where(np.arange(len(current)) % 2 == 0, "online", "pos")
    table = compute_drift(current, reference, ["channel"], "training")
    page = render_drift_report("2025-09-01", table, current, {"training": reference}, summarize_drift(table), top=1)
    assert page.count("<rect") >= 6  # 3 categories x 2 samples, plus the legend
    assert "<title>current online: 0.5000</title>" in page
    assert "DRIFTED" in page


def test_write_report_replaces_the_file_and_leaves_no_staging_files(tmp_path):
    path = tmp_path / "drift_reports" / "dt=2025-09-01" / "report.html"
    write_report(path, "first")
    write_report(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]
