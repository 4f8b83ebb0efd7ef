"""The labels zone on a real S3-compatible server (moto_server on 127.0.0.1)."""

import datetime as dt
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster_aws.s3 import S3Resource

from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.lib.labels import LabelsDataError
from batchinfer_assets.resources.labels_zone import ParquetLabelsResource
from batchinfer_assets_tests.s3.conftest import REGION

DAY = dt.date(2025, 2, 11)


def _put(s3_env, name: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=f"labels/dt={DAY.isoformat()}/{name}", Body=sink.getvalue())


def _labels(ids, fraud, micros) -> pa.Table:
    return pa.table(
        {
            "transaction_id": pa.array(ids, pa.string()),
            "is_fraud": pa.array(fraud, pa.int8()),
            "labelled_at": pa.array(micros, pa.timestamp("us", tz="UTC")),
        }
    )


def test_labels_on_s3_are_read_and_fingerprinted_like_local_ones(s3_env, tmp_path):
    resource = ParquetLabelsResource(uri=f"s3://{s3_env.bucket}/labels", s3=S3Resource(region_name=REGION))
    assert resource.labels_for(DAY, CARD).labels.empty
    empty = resource.label_files_fingerprint(DAY, CARD)

    _put(s3_env, "part-1.parquet", _labels(["a", "b"], [0, 0], [1_739_300_000_000_000] * 2))
    first = resource.label_files_fingerprint(DAY, CARD)
    _put(s3_env, "part-2.parquet", _labels(["a"], [1], [1_739_900_000_000_000]))
    # Files are found as the landing zone finds them: a nested folder's object is data (here one dated 1970, before
    # the day: read, then ignored and counted), a writer's bookkeeping is not.
    _put(s3_env, "hour=07/part-0.parquet", _labels(["z"], [1], [0]))
    _put(s3_env, "_SUCCESS.parquet", _labels(["z"], [1], [0]))
    second = resource.label_files_fingerprint(DAY, CARD)

    assert len({empty, first, second}) == 3 and second.startswith("3:")
    day = resource.labels_for(DAY, CARD)
    assert day.labels["is_fraud"].tolist() == [1, 0] and day.contradictory == 1
    assert day.before_day == 1
    assert day.sources == (
        f"s3://{s3_env.bucket}/labels/dt={DAY.isoformat()}/hour=07/part-0.parquet",
        f"s3://{s3_env.bucket}/labels/dt={DAY.isoformat()}/part-1.parquet",
        f"s3://{s3_env.bucket}/labels/dt={DAY.isoformat()}/part-2.parquet",
    )

    # Past a chunk the same files are read in batches into id ranges on local disk: the same labels and counts.
    with resource.labels_within(DAY, CARD, chunk_rows=1, spill_dir=str(tmp_path)) as spilled:
        assert spilled.sources == day.sources and (spilled.rows_read, spilled.before_day) == (4, 1)
        spilled.split(2)
        parts = [spilled.bucket(k) for k in range(spilled.count)]
    assert [i for p in parts for i in p.labels["transaction_id"]] == ["a", "b"]
    assert [v for p in parts for v in p.labels["is_fraud"]] == [1, 0] and sum(p.contradictory for p in parts) == 1

    _put(s3_env, "part-3.parquet", _labels(["c"], [1], [1_739_900_000_000_000]).drop_columns(["labelled_at"]))
    with pytest.raises(LabelsDataError, match=rf"labels file s3://{s3_env.bucket}/labels/dt=2025-02-11/part-3.parquet: required column\(s\) missing: labelled_at"):
        resource.labels_for(DAY, CARD)
