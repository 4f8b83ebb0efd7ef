"""The whole system as an operator runs it: dagster-webserver and dagster-daemon as real processes.

A three-day backfill of a subset of the graph is launched through GraphQL; the backfill daemon runs it as
one run (single-run backfill policy), every day ends with its own check verdicts on its own partition, and
the publishing sensor, running by default in the daemon, publishes all three days with no further request.
Headless Chromium then saves screenshots of the asset graph and of a check's per-day partition view.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from batchinfer_assets_tests.system.dagster_processes import (
    REPO,
    backfill_scoring_then_wait_for_publishing,
    check_statuses_by_day,
    observed_versions,
    running_dagster,
    stale_status_by_day,
)

DAYS = ["2025-04-07", "2025-04-08", "2025-04-09"]


@pytest.fixture
def dagster_system(tmp_path, demo_model_store):
    with running_dagster(tmp_path, demo_model_store.tracking_uri, REPO / "dagster.yaml") as system:
        yield system


def test_backfill_through_graphql_then_the_sensor_publishes_every_day(dagster_system, tmp_path):
    system = dagster_system
    backfill_scoring_then_wait_for_publishing(system, DAYS)

    # Each day of the one-run range carries its own verdict on its own partition (not "skipped").
    assert check_statuses_by_day(system, "transaction_features", DAYS) == {
        "invalid_share_within_limit": dict.fromkeys(DAYS, "SUCCEEDED")
    }
    assert check_statuses_by_day(system, "input_snapshot", DAYS) == {"matches_model_signature": dict.fromkeys(DAYS, "SUCCEEDED")}
    assert set(check_statuses_by_day(system, "drift_metrics", DAYS)["drift_check"].values()) <= {"SUCCEEDED", "FAILED"}

    # The registry's version was observed without anyone pressing Observe (by the scoring run, else the daemon's
    # model-version sensor), and every scored day reads fresh against it, down to the published rows.
    system.wait_for("an observation of scoring_model", lambda: observed_versions(system, "scoring_model")[:1] == ["1"], timeout=120)
    for asset in ("predictions", "drift_metrics", "published_predictions", "prediction_performance"):
        assert stale_status_by_day(system, asset, DAYS) == dict.fromkeys(DAYS, "FRESH"), asset

    graph = tmp_path / "asset-graph.png"
    _screenshot(f"{system.url}/asset-groups", graph, tmp_path / "chromium")
    checks = tmp_path / "check-partitions.png"
    passed_days = _screenshot_check_partitions(system.url, "transaction_features", "invalid_share_within_limit", checks)
    assert passed_days == len(DAYS), "the check's partition view counts each day of the range as passed"
    for screenshot in (graph, checks):
        _assert_real_picture(screenshot)
        if os.environ.get("BATCHINFER_SCREENSHOTS_TO"):
            shutil.copy(screenshot, Path(os.environ["BATCHINFER_SCREENSHOTS_TO"]) / screenshot.name)


def _screenshot_check_partitions(url: str, asset: str, check: str, path: Path) -> int:
    """Open a check's Partitions tab in headless Chromium (a click: the tab is not in the URL), show only the
    days that have a verdict, save a screenshot, and return the "Passed (N)" count the page shows."""
    import re

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{url}/assets/{asset}?view=checks&checkDetail={check}")
            history = page.get_by_text("Execution history", exact=True)
            history.wait_for(timeout=60_000)
            history.locator("xpath=following::*[normalize-space(text())='Partitions'][1]").click()
            missing = page.get_by_text(re.compile(r"^Missing \(\d+\)$"))
            missing.wait_for(timeout=60_000)
            missing.click()
            passed = page.get_by_text(re.compile(r"^Passed \(\d+\)$"))
            passed.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(path))
            return int(re.search(r"\d+", passed.inner_text()).group())
        finally:
            browser.close()


# Without the background-networking flags Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium for this test")
    return chromium


def _screenshot(url: str, path: Path, profile: Path) -> None:
    subprocess.run(
        [
            _chromium(), "--headless", *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=20000",
            f"--screenshot={path}", url,
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )


def _assert_real_picture(path: Path) -> None:
    """A 1600x1000 PNG with enough distinct colours to be a rendered page, not a blank one."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (1600, 1000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50, f"screenshot looks blank: {len(colours or [])} colours"
