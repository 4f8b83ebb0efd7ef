"""The whole system as an operator runs it: dagster-webserver and dagster-daemon as real processes.

A two-day backfill of a subset of the graph is launched through GraphQL as the UI's partition dialog does; the
backfill daemon runs it as one run (single-run backfill policy) and the publishing sensor, running by default in the
daemon, publishes both days with no further request. Two assets are then launched for one day each as the asset
page's Materialize button does (with every check the UI adds). Read back over GraphQL: no launch judged freshness
(only its sensor does), every day still reads fresh, and every check has one verdict that every summary of the UI
reads. Headless Chromium saves screenshots of the asset graph, of the backfill's run while it runs, and of
drift_metrics' Plots.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from batchinfer_assets_tests.system.dagster_processes import (
    REPO,
    backfill_runs,
    check_executions,
    check_summaries,
    launch_like_the_ui,
    launch_scoring_backfill,
    observed_versions,
    run_status,
    running_dagster,
    stale_status_by_day,
    wait_for_run,
    wait_for_scoring_then_publishing,
)

DAYS = ["2025-04-08", "2025-04-09"]
PIPELINE_CHECKS = {
    "transaction_features": "invalid_share_within_limit",
    "input_snapshot": "matches_model_signature",
    "drift_metrics": "drift_check",
    "prediction_performance": "performance_within_floor",
}
ON_TIME_CHECKS = ("predictions_on_time", "published_predictions_on_time")


@pytest.fixture
def dagster_system(tmp_path, demo_model_store):
    with running_dagster(tmp_path, demo_model_store.tracking_uri, REPO / "dagster.yaml") as system:
        yield system


def test_ui_launches_leave_freshness_to_its_sensor_and_every_check_reads_one_verdict(dagster_system, tmp_path):
    system = dagster_system
    shots = {name: tmp_path / f"{name}.png" for name in ("asset-graph", "run-in-progress", "runs-in-progress", "plots")}

    with _browser() as page:
        backfill_id = launch_scoring_backfill(system, DAYS)
        run_id, progress = system.wait_for("the backfill's run to report its progress", lambda: _progress(system, backfill_id), 300, 0.5)
        page.goto(f"{system.url}/runs/{run_id}")
        page.get_by_text("daily_pipeline").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots["run-in-progress"]))
        page.goto(f"{system.url}/runs/b/{backfill_id}?tab=runs")
        page.get_by_text(run_id[:8]).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots["runs-in-progress"]))
        print(f"run {run_id} while running: {run_status(system, run_id)[0]}, progress {progress!r}")
        wait_for_scoring_then_publishing(system, backfill_id, DAYS)
        backfill_run_ids = {r["runId"] for r in backfill_runs(system, backfill_id)}

        # The registry's version was observed without anyone pressing Observe, and every backfilled day reads fresh.
        system.wait_for("an observation of scoring_model", lambda: observed_versions(system, "scoring_model")[:1] == ["1"], timeout=120)
        for asset in ("predictions", "drift_metrics", "published_predictions", "prediction_performance"):
            assert stale_status_by_day(system, asset, DAYS) == dict.fromkeys(DAYS, "FRESH"), asset

        # One asset, one day each, as the asset page launches it (the UI adds every check of the asset in that job).
        launched = {asset: launch_like_the_ui(system, [asset], DAYS[0]) for asset in ("predictions", "drift_metrics")}
        for asset, launched_run in launched.items():
            assert wait_for_run(system, launched_run) == "SUCCESS", asset
        # Re-scoring a day gives the same data version (same snapshot, same model), so neither that day's drift nor
        # the other day's reads stale in the UI: the UI shows Dagster's own per-day status read here.
        for asset in ("predictions", "drift_metrics"):
            assert stale_status_by_day(system, asset, DAYS) == dict.fromkeys(DAYS, "FRESH"), asset

        # Freshness is judged by its sensor alone: no launch included an on-time check, none is skipped or failed
        # to execute (the sensor's own verdicts are runless and say whether yesterday landed by 06:00).
        ours = backfill_run_ids | set(launched.values())
        assert check_summaries(system, "predictions") == {} and check_summaries(system, "published_predictions") == {}
        for check in ON_TIME_CHECKS:
            executions = check_executions(system, "delivery_deadline", check)
            assert not [e for e in executions if e["runId"] in ours], check
            assert {e["status"] for e in executions} <= {"SUCCEEDED", "FAILED"}, (check, executions)

        # One verdict per check: no per-partition statuses for the UI to sum differently; the verdict every summary
        # reads is the check's newest execution, resolved (never skipped), for the newest day its latest run judged.
        for asset, check in PIPELINE_CHECKS.items():
            summary = check_summaries(system, asset)[check]
            latest = summary["executionForLatestMaterialization"]
            executions = check_executions(system, asset, check)
            assert summary["partitionStatuses"] is None, check
            assert latest is not None and latest["status"] in ("SUCCEEDED", "FAILED"), (check, latest)
            assert (latest["runId"], latest["status"]) == (executions[0]["runId"], executions[0]["status"]), check
            assert {e["status"] for e in executions} <= {"SUCCEEDED", "FAILED"}, (check, executions)
            assert latest["evaluation"]["partition"] in DAYS, check
            assert {"day", "failing_days"} <= {m["label"] for m in latest["evaluation"]["metadataEntries"]}, check

        drift = check_summaries(system, "drift_metrics")["drift_check"]["executionForLatestMaterialization"]
        assert (drift["runId"], drift["evaluation"]["partition"]) == (launched["drift_metrics"], DAYS[0])

        # Wide enough for the fitted graph to draw each node's status and check summary.
        page.set_viewport_size({"width": 2600, "height": 1400})
        page.goto(f"{system.url}/asset-groups")
        page.get_by_text(re.compile(r"^\d+ / \d+ Passed$")).first.wait_for(timeout=90_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(shots["asset-graph"]))
        page.set_viewport_size({"width": 1600, "height": 1000})
        page.goto(f"{system.url}/assets/drift_metrics")
        page.get_by_text("Plots", exact=True).first.click(timeout=60_000)
        # By event time: the partition view spans the last 120 days, which these 2025 days are not in.
        page.get_by_text("Events", exact=True).last.click(timeout=60_000)
        page.get_by_text("features_drifted_vs_training", exact=True).first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(shots["plots"]), full_page=True)

    for shot in shots.values():
        _assert_real_picture(shot)
        if os.environ.get("BATCHINFER_SCREENSHOTS_TO"):
            shutil.copy(shot, Path(os.environ["BATCHINFER_SCREENSHOTS_TO"]) / shot.name)


def _progress(system, backfill_id: str):
    """(run id, progress tag) once the backfill's run has tagged where it is, else None."""
    for run in backfill_runs(system, backfill_id):
        _, tags = run_status(system, run["runId"])
        if "batchinfer/progress" in tags:
            return run["runId"], tags["batchinfer/progress"]
    return None


class _browser:
    """Headless Chromium (Debian's) through Playwright: one page, 1600x1000, always closed."""

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        return self._browser.new_page(viewport={"width": 1600, "height": 1000})

    def __exit__(self, *exc):
        self._browser.close()
        self._playwright.stop()


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


def _assert_real_picture(path: Path) -> None:
    """A PNG at least 1600 wide with enough distinct colours to be a rendered page, not a blank one."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] >= 1600
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50, f"screenshot looks blank: {len(colours or [])} colours"
