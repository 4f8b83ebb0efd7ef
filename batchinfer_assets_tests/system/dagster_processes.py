"""dagster-webserver and dagster-daemon as real processes on loopback, and a small GraphQL client for them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

from batchinfer_assets_tests.processes import default_signals, free_port, stop_process_group

REPO = Path(__file__).resolve().parents[2]
# A subset of the pipeline (no quarantine, no publishing), as a user picks it in the lineage view.
# With the evaluation in the backfill, the labels sensor finds nothing to re-evaluate (it would otherwise request
# the scored days after its 5-minute interval, a third backfill run on a slow machine).
SCORING_ASSETS = ["raw_transactions", "transaction_features", "input_snapshot", "predictions", "drift_metrics", "prediction_performance"]
STARTUP_TIMEOUT = 180
BACKFILL_TIMEOUT = 420
PUBLISH_TIMEOUT = 240


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


@contextmanager
def running_dagster(
    tmp_path: Path, tracking_uri: str, instance_yaml: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[Dagster]:
    """Webserver and daemon on `instance_yaml` (copied to DAGSTER_HOME/dagster.yaml), always torn down."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(instance_yaml, dagster_home / "dagster.yaml")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "BATCHINFER_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "BATCHINFER_DEMO_ROWS_PER_DAY": "1000",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    port = free_port()
    bin_dir = Path(sys.executable).parent
    commands = {
        "webserver": [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        "daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    }
    # Create the instance's storages once: processes starting together on a fresh home race to stamp them.
    subprocess.run([str(bin_dir / "dagster"), "instance", "migrate"], cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
    procs = []
    try:
        for name, command in commands.items():
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            procs.append(
                subprocess.Popen(
                    command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=default_signals,
                )
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
            stop_process_group(proc)


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


def materialized_days(system: Dagster, asset: str, days: list[str]) -> list[str]:
    data = system.graphql(MATERIALIZED, key=[asset], partitions=days)
    events = (data["assetOrError"] or {}).get("assetMaterializations") or []
    return sorted({e["partition"] for e in events})


def backfill_scoring_then_wait_for_publishing(system: Dagster, days: list[str]) -> None:
    """Backfill the scoring assets for `days` through GraphQL as one run, then wait for the sensor to publish them."""
    wait_for_scoring_then_publishing(system, launch_scoring_backfill(system, days), days)


def launch_scoring_backfill(system: Dagster, days: list[str]) -> str:
    """Launch a backfill of the scoring assets for `days` as the UI's partition dialog does; its id."""
    launched = system.graphql(
        LAUNCH,
        params={
            "partitionNames": days,
            "assetSelection": [{"path": [key]} for key in SCORING_ASSETS],
            "fromFailure": False,
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def backfill_runs(system: Dagster, backfill_id: str) -> list[dict]:
    return system.graphql(RUNS, id=backfill_id)["runsOrError"]["results"]


def wait_for_scoring_then_publishing(system: Dagster, backfill_id: str, days: list[str]) -> None:
    """Wait for the scoring backfill to succeed in one run, then for the sensor to publish its days."""

    def backfill_done():
        status = system.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]["status"]
        return status if status not in ("REQUESTED", "CANCELING", "FAILING") else None

    assert system.wait_for("the backfill to finish", backfill_done, BACKFILL_TIMEOUT, interval=3) == "COMPLETED_SUCCESS"
    runs = backfill_runs(system, backfill_id)
    assert [r["status"] for r in runs] == ["SUCCESS"], "a single-run backfill scores all the days in one run"
    assert materialized_days(system, "predictions", days) == days
    assert materialized_days(system, "published_predictions", days) == [], "the backfill itself did not publish"

    published = system.wait_for(
        f"the sensor to publish all {len(days)} days",
        lambda: (published_days := materialized_days(system, "published_predictions", days)) == days and published_days,
        PUBLISH_TIMEOUT,
        interval=3,
    )
    assert published == days


STALENESS = """
query ($key: [String!]!, $partitions: [String!]) {
  assetNodeOrError(assetKey: {path: $key}) { ... on AssetNode { staleStatusByPartition(partitions: $partitions) } }
}"""

OBSERVATIONS = """
query ($key: [String!]!) {
  assetOrError(assetKey: {path: $key}) {
    ... on Asset { assetObservations(limit: 5) { runId tags { key value } } }
  }
}"""


def stale_status_by_day(system: Dagster, asset: str, days: list[str]) -> dict[str, str]:
    """Dagster's own stale status of each day of `asset`, as the UI reads it."""
    data = system.graphql(STALENESS, key=[asset], partitions=days)["assetNodeOrError"]
    return dict(zip(days, data["staleStatusByPartition"]))


def observed_versions(system: Dagster, asset: str) -> list[str]:
    """Data versions of the latest observations of an observable asset, newest first."""
    observations = system.graphql(OBSERVATIONS, key=[asset])["assetOrError"]["assetObservations"]
    return [next((t["value"] for t in o["tags"] if t["key"] == "dagster/data_version"), "") for o in observations]


LAUNCH_ASSETS = """
query($keys: [AssetKeyInput!]!) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    jobNames
    repository { name location { name } }
    assetChecksOrError { ... on AssetChecks { checks { name jobNames } } }
  }
}"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""
RUN = """
query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }
"""


def launch_like_the_ui(system: Dagster, assets: list[str], day: str) -> str:
    """Launch `assets` for `day` as the asset page's Materialize button does: their common job, every check of theirs
    in that job (getAssetCheckHandleInputs in the UI), the day as a partition tag. Returns the run id."""
    nodes = system.graphql(LAUNCH_ASSETS, keys=[{"path": [a]} for a in assets])["assetNodes"]
    job = next(name for name in nodes[0]["jobNames"] if all(name in n["jobNames"] for n in nodes))
    checks = [
        {"name": c["name"], "assetKey": {"path": n["assetKey"]["path"]}}
        for n in nodes
        for c in (n["assetChecksOrError"] or {}).get("checks", [])
        if job in c["jobNames"]
    ]
    params = {
        "mode": "default",
        "runConfigData": "{}",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]},
        "selector": {
            "repositoryLocationName": nodes[0]["repository"]["location"]["name"],
            "repositoryName": nodes[0]["repository"]["name"],
            "pipelineName": job,
            "assetSelection": [{"path": [a]} for a in assets],
            "assetCheckSelection": checks,
        },
    }
    launched = system.graphql(LAUNCH_RUN, params=params)["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def run_status(system: Dagster, run_id: str) -> tuple[str, dict[str, str]]:
    run = system.graphql(RUN, id=run_id)["runOrError"]
    return run["status"], {t["key"]: t["value"] for t in run["tags"]}


def wait_for_run(system: Dagster, run_id: str, timeout: float = BACKFILL_TIMEOUT) -> str:
    def finished():
        status, _ = run_status(system, run_id)
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    return system.wait_for(f"run {run_id} to finish", finished, timeout, interval=3)


CHECK_SUMMARIES = """
query($key: [String!]!) {
  assetNodeOrError(assetKey: {path: $key}) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses { __typename }
            executionForLatestMaterialization { runId status evaluation { partition metadataEntries { label } } }
          }
        }
      }
    }
  }
}"""
CHECK_EXECUTIONS = """
query($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 100) { runId status evaluation { partition } }
}"""


def check_summaries(system: Dagster, asset: str) -> dict[str, dict]:
    """Per check of `asset`: what every summary in the UI reads (its partition statuses and its latest execution)."""
    data = system.graphql(CHECK_SUMMARIES, key=[asset])["assetNodeOrError"]["assetChecksOrError"]
    return {c["name"]: c for c in data["checks"]}


def check_executions(system: Dagster, asset: str, check: str) -> list[dict]:
    """The check's executions, newest first, as its Execution history lists them."""
    return system.graphql(CHECK_EXECUTIONS, key={"path": [asset]}, check=check)["assetCheckExecutions"]
