"""One day through the real dagster-webserver and dagster-daemon with BATCHINFER_SCORING_ENGINE=ray on the loopback cluster."""

import json

from batchinfer_assets_tests.ray.cluster import LOOPBACK_ENV, LoopbackRayCluster
from batchinfer_assets_tests.system.dagster_processes import BACKFILL, BACKFILL_TIMEOUT, LAUNCH, REPO, RUNS, SCORING_ASSETS, running_dagster

DAY = "2025-04-07"
PREDICTION_METADATA = """
query($partitions: [String!]) {
  assetOrError(assetKey: {path: ["predictions"]}) {
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        partition
        metadataEntries { label ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue } ... on JsonMetadataEntry { jsonString } }
      }
    }
  }
}"""


def test_a_backfilled_day_is_scored_on_the_ray_cluster(ray_cluster: LoopbackRayCluster, demo_model_store, tmp_path):
    env = {**LOOPBACK_ENV, "BATCHINFER_SCORING_ENGINE": "ray", "RAY_ADDRESS": ray_cluster.address}
    with running_dagster(tmp_path, demo_model_store.tracking_uri, REPO / "dagster.yaml", extra_env=env) as system:
        launched = system.graphql(
            LAUNCH, params={"partitionNames": [DAY], "assetSelection": [{"path": [k]} for k in SCORING_ASSETS], "fromFailure": False}
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched

        def backfill_done():
            status = system.graphql(BACKFILL, id=launched["backfillId"])["partitionBackfillOrError"]["status"]
            return status if status not in ("REQUESTED", "CANCELING", "FAILING") else None

        assert system.wait_for("the backfill to finish", backfill_done, BACKFILL_TIMEOUT, interval=3) == "COMPLETED_SUCCESS"
        assert [r["status"] for r in system.graphql(RUNS, id=launched["backfillId"])["runsOrError"]["results"]] == ["SUCCESS"]
        (event,) = system.graphql(PREDICTION_METADATA, partitions=[DAY])["assetOrError"]["assetMaterializations"]

    metadata = {
        e["label"]: json.loads(e["jsonString"]) if "jsonString" in e else e.get("text", e.get("intValue")) for e in event["metadataEntries"]
    }
    # The engine as the environment builds it sizes its pool: a 1,000-row day is one batch, so one actor.
    assert (metadata["engine"], metadata["engine_details"]["actors"], metadata["device"]) == ("ray", 1, "cpu")
    assert metadata["row_count"] > 0 and metadata["model_version"] == "1"
