"""The whole system as an operator runs it: dagster-webserver and dagster-daemon as real processes.

A three-day backfill is launched through GraphQL; the backfill daemon runs it as one run (single-run
backfill policy), and the publishing sensor, running by default in the daemon, publishes all three days
with no further request. Headless Chromium then loads the asset graph page and saves a screenshot.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from batchinfer_assets_tests.system.dagster_processes import REPO, backfill_scoring_then_wait_for_publishing, running_dagster

DAYS = ["2025-04-07", "2025-04-08", "2025-04-09"]


@pytest.fixture
def dagster_system(tmp_path, demo_model_store):
    with running_dagster(tmp_path, demo_model_store.tracking_uri, REPO / "dagster.yaml") as system:
        yield system


def test_backfill_through_graphql_then_the_sensor_publishes_every_day(dagster_system, tmp_path):
    system = dagster_system
    backfill_scoring_then_wait_for_publishing(system, DAYS)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium for this test")
    screenshot = tmp_path / "asset-graph.png"
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1600,1000", "--virtual-time-budget=20000",
            f"--screenshot={screenshot}", f"{system.url}/asset-groups",
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    _assert_real_picture(screenshot)
    if os.environ.get("BATCHINFER_SCREENSHOT_TO"):
        shutil.copy(screenshot, os.environ["BATCHINFER_SCREENSHOT_TO"])


def _assert_real_picture(path: Path) -> None:
    """A 1600x1000 PNG with enough distinct colours to be a rendered page, not a blank one."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (1600, 1000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50, f"screenshot looks blank: {len(colours or [])} colours"
