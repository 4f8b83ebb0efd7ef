"""The whole system as an operator runs it: dagster-webserver and dagster-daemon as real processes.

A three-day backfill is launched through GraphQL; the backfill daemon runs it as one run (single-run
backfill policy), and the publishing sensor, running by default in the daemon, publishes all three days
with no further request. Headless Chromium then loads the asset graph page and saves a screenshot.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
DAYS = ["2025-04-07", "2025-04-08", "2025-04-09"]
SCORING_ASSETS = ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot", "predictions", "drift_metrics"]
STARTUP_TIMEOUT = 180
BACKFILL_TIMEOUT = 420
PUBLISH_TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class Dagster:
    """A running webserver + daemon pair and a small GraphQL client for them."""

    def __init__(self, url: str, logs: Path):
        self.url = url
        self.logs = logs

    def graphql(self, query: str, **variables) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_for(self, what: str, predicate, timeout: float, interval: float = 2.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        tails = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.logs.glob("*.log")))
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{tails}")


@pytest.fixture
def dagster_system(tmp_path, demo_model_store):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "BATCHINFER_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": demo_model_store.tracking_uri,
        "BATCHINFER_DEMO_ROWS_PER_DAY": "1000",
        "PYTHONUNBUFFERED": "1",
    }
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    commands = {
        "webserver": [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        "daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    }
    # Create the SQLite storages once: processes starting together on a fresh home race to stamp them.
    subprocess.run([str(bin_dir / "dagster"), "instance", "migrate"], cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
    procs = []
    try:
        for name, command in commands.items():
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            procs.append(
                subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
        system = Dagster(f"http://127.0.0.1:{port}", logs)

        def location_loaded():
            try:
                data = system.graphql("{ workspaceOrError { ... on Workspace { locationEntries { loadStatus locationOrLoadError { __typename } } } } }")
            except requests.RequestException:
                return False
            entries = data["workspaceOrError"]["locationEntries"]
            return bool(entries) and entries[0]["loadStatus"] == "LOADED" and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"

        system.wait_for("the code location to load in the webserver", location_loaded, STARTUP_TIMEOUT)
        yield system
    finally:
        for proc in procs:
            _stop(proc)


LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""
BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } ... on PythonError { message } }
}"""
RUNS = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) { ... on Runs { results { runId status } } }
}"""
MATERIALIZED = """
query($key: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $key}) { ... on Asset { assetMaterializations(partitions: $partitions) { partition runId } } }
}"""


def _materialized_days(system: Dagster, asset: str) -> list[str]:
    data = system.graphql(MATERIALIZED, key=[asset], partitions=DAYS)
    events = (data["assetOrError"] or {}).get("assetMaterializations") or []
    return sorted({e["partition"] for e in events})


def test_backfill_through_graphql_then_the_sensor_publishes_every_day(dagster_system, tmp_path):
    system = dagster_system
    launched = system.graphql(
        LAUNCH,
        params={
            "partitionNames": DAYS,
            "assetSelection": [{"path": [key]} for key in SCORING_ASSETS],
            "fromFailure": False,
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def backfill_done():
        status = system.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]["status"]
        return status if status not in ("REQUESTED", "CANCELING", "FAILING") else None

    assert system.wait_for("the backfill to finish", backfill_done, BACKFILL_TIMEOUT, interval=3) == "COMPLETED_SUCCESS"
    runs = system.graphql(RUNS, id=backfill_id)["runsOrError"]["results"]
    assert [r["status"] for r in runs] == ["SUCCESS"], "a single-run backfill scores the three days in one run"
    assert _materialized_days(system, "predictions") == DAYS
    assert _materialized_days(system, "published_predictions") == [], "the backfill itself did not publish"

    published = system.wait_for(
        "the sensor to publish all three days",
        lambda: (days := _materialized_days(system, "published_predictions")) == DAYS and days,
        PUBLISH_TIMEOUT,
        interval=3,
    )
    assert published == DAYS

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
