"""The whole system with S3 storage: daemon-launched runs are new processes that reach the S3 server themselves."""

from batchinfer_assets.lib.hashing import table_content_hash
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets_tests.system.dagster_processes import REPO, backfill_scoring_then_wait_for_publishing, running_dagster

DAYS = ["2025-06-02"]
# What the backfill selects (no quarantine: it is a subset of the graph) and writes to storage (publishing goes
# to the database).
TABLES = ["raw_transactions", "transaction_features", "input_snapshot", "predictions", "drift_metrics", "prediction_performance"]


def test_backfill_through_the_daemon_stores_every_table_on_s3(tmp_path, demo_model_store, s3_env):
    # running_dagster passes os.environ on, which carries the fixture's AWS_* variables.
    env = {"BATCHINFER_STORAGE_URI": f"s3://{s3_env.bucket}/warehouse"}
    with running_dagster(tmp_path, demo_model_store.tracking_uri, REPO / "dagster.yaml", env) as system:
        backfill_scoring_then_wait_for_publishing(system, DAYS)

    page = s3_env.client.list_objects_v2(Bucket=s3_env.bucket, Prefix="warehouse/")
    keys = {item["Key"] for item in page.get("Contents", [])}
    expected = {f"warehouse/{t}/dt={d}/part-00000.parquet" for t in TABLES for d in DAYS}
    expected |= {f"warehouse/drift_reports/dt={d}/report.html" for d in DAYS}
    # Each scored input is archived by its content hash beside the tables.
    store = PartitionedParquetStore(f"s3://{s3_env.bucket}/warehouse", s3_client=s3_env.client)
    hashes = {table_content_hash(store.read_partition("input_snapshot", d)).removeprefix("sha256:") for d in DAYS}
    expected |= {f"warehouse/input_snapshot_archive/sha256={h}/part-00000.parquet" for h in hashes}
    assert keys == expected
    assert not (tmp_path / "home" / "storage").exists(), "nothing went to the local default storage"
