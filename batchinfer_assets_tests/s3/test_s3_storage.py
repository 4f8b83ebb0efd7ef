"""Asset tables and landing files on a real S3-compatible server (moto_server on 127.0.0.1)."""

import dataclasses
import datetime as dt
import io
import urllib.parse

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from dagster_aws.s3 import S3Resource

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.domains.card_transactions.synthetic import generate_day
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.lib.parquet_store import (
    BucketNotFoundError,
    PartitionedParquetStore,
    StorageUnavailableError,
)
from batchinfer_assets.resources.landing_zone import ParquetLandingZoneResource
from batchinfer_assets_tests.processes import free_port
from batchinfer_assets_tests.s3.conftest import REGION
from batchinfer_assets_tests.support import materializations

DAY = "2025-02-11"
TABLES = ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot", "predictions", "drift_metrics", "prediction_performance"]


def _keys(s3_env, prefix: str) -> dict[str, str]:
    """Every key under the prefix with its ETag."""
    page = s3_env.client.list_objects_v2(Bucket=s3_env.bucket, Prefix=prefix)
    assert not page.get("IsTruncated")
    return {item["Key"]: item["ETag"] for item in page.get("Contents", [])}


def _land(s3_env, day: str, frame: pd.DataFrame, name: str = "part-0.parquet") -> None:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=f"landing/dt={day}/{name}", Body=sink.getvalue())


def _materialize_day(settings, day: str):
    defs = build_definitions(settings)
    assets = [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.SourceAsset))]
    selection = dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")
    return dg.materialize(assets, resources=build_resources(settings), partition_key=day, selection=selection)


def _store(s3_env) -> PartitionedParquetStore:
    return PartitionedParquetStore(f"s3://{s3_env.bucket}/warehouse", s3_client=s3_env.client)


def _expected_keys(day: str, *scored_snapshots: str) -> set[str]:
    """The day's objects, with the archived copy of each input snapshot scored so far (by content hash)."""
    archived = {f"warehouse/input_snapshot_archive/sha256={h.removeprefix('sha256:')}/part-00000.parquet" for h in scored_snapshots}
    return {f"warehouse/{t}/dt={day}/part-00000.parquet" for t in TABLES} | {f"warehouse/drift_reports/dt={day}/report.html"} | archived


def test_a_day_with_storage_and_landing_on_s3_then_a_rerun_replaces_each_days_object(s3_env, pipeline_settings):
    settings = dataclasses.replace(
        pipeline_settings,
        storage_uri=f"s3://{s3_env.bucket}/warehouse",
        landing_uri=f"s3://{s3_env.bucket}/landing",
        aws_region=REGION,
    )
    first = generate_day(dt.date.fromisoformat(DAY), 900)
    _land(s3_env, DAY, first.iloc[:500], "part-0.parquet")
    _land(s3_env, DAY, first.iloc[500:], "part-1.parquet")

    result = _materialize_day(settings, DAY)
    assert result.success
    before = _keys(s3_env, "warehouse/")
    first_input = materializations(result, "predictions")[DAY].metadata["input_snapshot_hash"].value
    assert set(before) == _expected_keys(DAY, first_input)
    store = _store(s3_env)
    predictions = store.read_partition("predictions", DAY).to_pandas()
    assert len(predictions) == 900 and set(predictions["transaction_id"]) == set(first["transaction_id"])
    assert store.read_partition("raw_transactions", DAY).num_rows == 900
    meta = materializations(result, "predictions")[DAY].metadata
    assert meta["uri"].value == f"s3://{s3_env.bucket}/warehouse/predictions/dt={DAY}"
    report = s3_env.client.get_object(Bucket=s3_env.bucket, Key=f"warehouse/drift_reports/dt={DAY}/report.html")
    assert report["ContentType"].startswith("text/html") and DAY in report["Body"].read().decode()
    # The report is one click away in the UI: a presigned link that a browser (here: requests) can open.
    link = materializations(result, "drift_metrics")[DAY].metadata["report"].value
    assert f"/warehouse/drift_reports/dt={DAY}/report.html?" in urllib.parse.unquote(link) and "Signature=" in link
    page = requests.get(link, timeout=30)
    assert page.status_code == 200 and DAY in page.text

    # The landing day changes, and a stale part of an older multi-file layout lingers beside the day's object.
    s3_env.client.delete_object(Bucket=s3_env.bucket, Key=f"landing/dt={DAY}/part-1.parquet")
    stale = f"warehouse/predictions/dt={DAY}/part-00001.parquet"
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=stale, Body=b"left by an older layout")
    second = _materialize_day(settings, DAY)
    assert second.success

    after = _keys(s3_env, "warehouse/")
    second_input = materializations(second, "predictions")[DAY].metadata["input_snapshot_hash"].value
    assert second_input != first_input
    assert set(after) == _expected_keys(DAY, first_input, second_input), "one object per day, same key, stale parts gone"
    changed = [k for k in after if k.endswith(".parquet") and k in before and after[k] != before[k]]
    # The quarantine is empty both times, so its bytes (and ETag) are the same; every other table changed.
    assert sorted(changed) == sorted(f"warehouse/{t}/dt={DAY}/part-00000.parquet" for t in TABLES if t != "quarantined_transactions")
    rescored = store.read_partition("predictions", DAY).to_pandas()
    assert sorted(rescored["transaction_id"]) == sorted(first["transaction_id"].iloc[:500])


def test_a_failed_write_leaves_the_day_unchanged_and_uploads_nothing(s3_env):
    store = _store(s3_env)
    old = pa.table({"transaction_id": ["a", "b"], "score": [0.1, 0.2]})
    store.write_partition("predictions", DAY, old)
    before = _keys(s3_env, "warehouse/")

    with pytest.raises(RuntimeError, match="scorer crashed"):
        with store.partition_writer("predictions", DAY, old.schema) as writer:
            writer.write(pa.table({"transaction_id": ["c"], "score": [0.9]}))
            raise RuntimeError("scorer crashed")

    assert _keys(s3_env, "warehouse/") == before
    assert store.read_partition("predictions", DAY).equals(old)


def test_a_missing_bucket_fails_once_naming_the_endpoint_and_the_bucket(s3_env, pipeline_settings):
    settings = dataclasses.replace(pipeline_settings, storage_uri="s3://no-such-bucket-batchinfer/warehouse", aws_region=REGION)
    result = dg.materialize(
        [a for a in build_definitions(settings).assets if isinstance(a, dg.AssetsDefinition)],
        resources=build_resources(settings),
        partition_key=DAY,
        selection=dg.AssetSelection.assets("raw_transactions"),
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1 and not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    message = str(failures[0].step_failure_data.error.to_string())
    assert "no-such-bucket-batchinfer" in message and s3_env.endpoint in message and "does not exist" in message


def test_landing_on_s3_fails_like_a_local_landing_zone(s3_env):
    landing = ParquetLandingZoneResource(uri=f"s3://{s3_env.bucket}/landing", s3=S3Resource(region_name=REGION))
    day = dt.date.fromisoformat(DAY)
    with pytest.raises(LandingDataError, match=rf"no landing data for {DAY}: folder s3://{s3_env.bucket}/landing/dt={DAY}/ does not exist"):
        landing.load_day(day, CARD)

    s3_env.client.put_object(Bucket=s3_env.bucket, Key=f"landing/dt={DAY}/README.txt", Body=b"not data")
    with pytest.raises(LandingDataError, match=rf"landing file s3://{s3_env.bucket}/landing/dt={DAY}/README.txt is not a readable Parquet file"):
        landing.load_day(day, CARD)

    s3_env.client.delete_object(Bucket=s3_env.bucket, Key=f"landing/dt={DAY}/README.txt")
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=f"landing/dt={DAY}/_SUCCESS", Body=b"")
    with pytest.raises(LandingDataError, match=rf"no landing data for {DAY}: no data files in s3://{s3_env.bucket}/landing/dt={DAY}/"):
        landing.load_day(day, CARD)

    bad_key = f"landing/dt={DAY}/part-0.parquet"
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=bad_key, Body=b"this is not parquet")
    with pytest.raises(LandingDataError, match=f"landing file s3://{s3_env.bucket}/{bad_key} is not a readable Parquet file"):
        landing.load_day(day, CARD)

    missing = ParquetLandingZoneResource(uri="s3://no-such-landing-bucket/x", s3=S3Resource(region_name=REGION))
    with pytest.raises(BucketNotFoundError, match=f"'no-such-landing-bucket' does not exist at the S3 endpoint {s3_env.endpoint}"):
        missing.load_day(day, CARD)


def test_an_unreachable_endpoint_names_the_endpoint_and_the_bucket(s3_env):
    closed = f"http://127.0.0.1:{free_port()}"
    client = S3Resource(region_name=REGION, endpoint_url=closed, max_attempts=1).get_client()
    store = PartitionedParquetStore(f"s3://{s3_env.bucket}/warehouse", s3_client=client)
    with pytest.raises(StorageUnavailableError, match=rf"cannot reach the S3 endpoint {closed} \(bucket '{s3_env.bucket}'\)"):
        store.has_partition("predictions", DAY)


class _Counting:
    """The S3 client as it is, with each call's name recorded (what the store asked the server for)."""

    def __init__(self, client) -> None:
        self._client, self.calls = client, []

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if callable(attribute):
            self.calls.append(name)
        return attribute


@pytest.mark.parametrize("footer_bigger_than_the_first_read", [False, True])
def test_a_days_rows_and_schema_come_from_the_footers_without_downloading_the_files(s3_env, footer_bigger_than_the_first_read):
    client = _Counting(s3_env.client)
    store = PartitionedParquetStore(f"s3://{s3_env.bucket}/warehouse", s3_client=client)
    columns = 3_000 if footer_bigger_than_the_first_read else 3  # a 3,000-column footer is over the first 64 KiB read
    rows = 1 if footer_bigger_than_the_first_read else 250_000
    table = pa.table({f"c{i}": pa.array(range(rows), pa.int64()) for i in range(columns)})
    store.write_partition("t", DAY, table)
    client.calls.clear()

    assert store.row_count("t", DAY) == table.num_rows
    assert store.schema("t", DAY).names == table.column_names

    assert "download_fileobj" not in client.calls
    # One ranged read of the object's end per footer (row count, then schema), two when the footer is bigger.
    assert client.calls.count("get_object") == (4 if footer_bigger_than_the_first_read else 2)
    assert store.read_partition("t", DAY).equals(table)


def test_a_file_that_is_not_parquet_is_named_when_its_rows_are_counted(s3_env):
    store = _store(s3_env)
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=f"warehouse/t/dt={DAY}/part-00000.parquet", Body=b"not parquet at all")
    with pytest.raises(pa.ArrowInvalid, match=f"s3://{s3_env.bucket}/warehouse/t/dt={DAY}/part-00000.parquet is not a Parquet file"):
        store.row_count("t", DAY)
