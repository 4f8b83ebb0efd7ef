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
    running_dagster,
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

    pictures = {
        "asset-graph.png": f"{system.url}/asset-groups",
        "check-partitions.png": f"{system.url}/assets/transaction_features?view=checks&checkDetail=invalid_share_within_limit",
    }
    for name, url in pictures.items():
        screenshot = tmp_path / name
        _screenshot(url, screenshot, tmp_path / "chromium")
        _assert_real_picture(screenshot)
        if os.environ.get("BATCHINFER_SCREENSHOTS_TO"):
            shutil.copy(screenshot, Path(os.environ["BATCHINFER_SCREENSHOTS_TO"]) / name)


def _screenshot(url: str, path: Path, profile: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium for this test")
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
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
