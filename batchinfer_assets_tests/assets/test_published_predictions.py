"""Publishing's join of predictions with the raw rows' business columns, whole and bucket by bucket."""

from __future__ import annotations

import dataclasses

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from batchinfer_assets.assets.published_predictions import OutOfRawOrder, joined_by_bucket, joined_in_raw_order, joined_rows
from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.lib.spill import bucket_of
from batchinfer_assets_tests.support import materializations


def _predictions(ids, scores):
    return pa.table({"transaction_id": pa.array(ids, pa.string()), "score": pa.array(scores, pa.float32())})


def _raw(ids, customers, amounts, id_type=None):
    return pa.table(
        {
            "transaction_id": pa.array(ids, id_type or pa.string()),
            "customer_id": pa.array(customers, pa.string()),
            "amount": pa.array(amounts, pa.float64()),
        }
    )


def test_each_prediction_gets_the_business_columns_of_its_ids_first_raw_row_in_the_predictions_order():
    # "x" was quarantined (never scored); the second "c" is a repeated id, quarantined too.
    predictions = _predictions(["c", "a", "d"], [0.3, 0.1, 0.4])
    raw = _raw(["a", "x", "c", "d", "c"], ["A", "X", "C", "D", "C2"], [1.0, 2.0, 3.0, 4.0, 5.0], pa.large_string())

    joined = joined_rows(predictions, raw, "transaction_id")

    assert joined.column_names == ["transaction_id", "score", "customer_id", "amount"]
    assert joined.to_pydict() == {
        "transaction_id": ["c", "a", "d"],
        "score": pytest.approx([0.3, 0.1, 0.4]),
        "customer_id": ["C", "A", "D"],
        "amount": [3.0, 1.0, 4.0],
    }


def test_when_every_raw_row_was_scored_the_business_columns_are_taken_as_they_are():
    joined = joined_rows(_predictions(["b", "a"], [0.5, 0.25]), _raw(["b", "a"], ["B", "A"], [2.0, 1.0]), "transaction_id")
    assert joined.to_pydict() == {"transaction_id": ["b", "a"], "score": [0.5, 0.25], "customer_id": ["B", "A"], "amount": [2.0, 1.0]}


def _schemas():
    predictions = pa.schema([("transaction_id", pa.string()), ("score", pa.float32())])
    raw = pa.schema([("transaction_id", pa.string()), ("customer_id", pa.string()), ("amount", pa.float64())])
    return predictions, raw


def test_joined_by_bucket_gives_each_bucket_its_predictions_in_order_with_their_first_raw_rows(tmp_path):
    count = 16
    ids = ["t1", "t2", "t3", "t4", "t5", "t6"]
    # Unscored raw ids, one of them in a bucket no prediction falls in (its bucket is then skipped on both sides).
    unscored = ["q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8"]
    buckets = dict(zip(ids + unscored, bucket_of(pa.array(ids + unscored), count).tolist(), strict=True))
    assert {buckets[q] for q in unscored} - {buckets[t] for t in ids}, "a bucket holding only unscored raw rows"
    assert len({buckets[t] for t in ids}) > 1, "predictions spread over several buckets"

    predictions_schema, raw_schema = _schemas()
    # Batches as storage yields them; predictions in the snapshot's order, raw ids in another type, "t3" repeated.
    predictions = [_predictions(["t5", "t2", "t6"], [0.5, 0.2, 0.6]).to_batches()[0], _predictions(["t1", "t4", "t3"], [0.1, 0.4, 0.3])]
    raw = [
        _raw(["q1", "t5", "t3", "q2", "t2"], ["Q1", "C5", "C3", "Q2", "C2"], [9.0, 5.0, 3.0, 9.0, 2.0], pa.large_string()),
        _raw(["t6", "t3", "q3", "q4", "q5"], ["C6", "C3-again", "Q3", "Q4", "Q5"], [6.0, 33.0, 9.0, 9.0, 9.0], pa.large_string()),
        _raw(["q6", "t1", "q7", "t4", "q8"], ["Q6", "C1", "Q7", "C4", "Q8"], [9.0, 1.0, 9.0, 4.0, 9.0], pa.large_string()),
    ]

    chunks = list(joined_by_bucket(predictions, predictions_schema, raw, raw_schema, "transaction_id", count, str(tmp_path)))

    order = ["t5", "t2", "t6", "t1", "t4", "t3"]
    for chunk in chunks:
        chunk_ids = chunk.column("transaction_id").to_pylist()
        assert len({buckets[t] for t in chunk_ids}) == 1, "one bucket per chunk"
        assert chunk_ids == sorted(chunk_ids, key=order.index), "the predictions' order within a bucket"
    rows = pa.concat_tables(chunks).sort_by("transaction_id").to_pydict()
    assert rows == {
        "transaction_id": ["t1", "t2", "t3", "t4", "t5", "t6"],
        "score": pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
        "customer_id": ["C1", "C2", "C3", "C4", "C5", "C6"],
        "amount": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    }
    assert list(tmp_path.iterdir()) == [], "the spilled buckets are removed"


@pytest.mark.parametrize("count", [1, 3, 64])
def test_joined_by_bucket_gives_the_rows_of_the_whole_day_join(count, tmp_path):
    rng = np.random.default_rng(count)
    raw_ids = [f"id-{i}" for i in rng.permutation(500)]
    scored = [i for i in raw_ids if rng.random() > 0.1]
    raw = _raw(raw_ids, [f"C{i}" for i in range(500)], rng.random(500).tolist())
    predictions = _predictions(scored, rng.random(len(scored)).tolist())

    whole = joined_rows(predictions, raw, "transaction_id")
    chunks = joined_by_bucket(
        predictions.to_batches(max_chunksize=37), _schemas()[0], raw.to_batches(max_chunksize=41), _schemas()[1],
        "transaction_id", count, str(tmp_path),
    )
    assert pa.concat_tables(chunks).sort_by("transaction_id").equals(whole.sort_by("transaction_id"))


@pytest.mark.parametrize(("piece", "raw_batch"), [(1, 1), (37, 41), (200, 13), (1_000, 1_000)])
def test_predictions_in_raw_order_are_joined_piece_by_piece_as_the_whole_day(piece, raw_batch):
    rng = np.random.default_rng(piece)
    raw_ids = [f"id-{i}" for i in rng.permutation(500)]
    raw_ids[300] = raw_ids[100]  # a repeated id: quarantined, never scored; its first row's columns are published
    raw = _raw(raw_ids, [f"C{i}" for i in range(500)], rng.random(500).tolist())
    scored = [i for n, i in enumerate(raw_ids) if n != 300 and rng.random() > 0.1]  # the valid rows, in the day's order
    predictions = _predictions(scored, rng.random(len(scored)).tolist())
    predictions_schema, raw_schema = _schemas()

    pieces = list(
        joined_in_raw_order(
            predictions.to_batches(max_chunksize=piece), predictions_schema, raw.to_batches(max_chunksize=raw_batch), raw_schema,
            "transaction_id", 2 * raw_batch + 50,
        )
    )

    assert [p.num_rows for p in pieces] == [b.num_rows for b in predictions.to_batches(max_chunksize=piece)]
    assert pa.concat_tables(pieces).equals(joined_rows(predictions, raw, "transaction_id"))
    assert pa.concat_tables(pieces).column("customer_id")[scored.index(raw_ids[100])].as_py() == "C100"


@pytest.mark.parametrize(
    "scored",
    [
        pytest.param(["b", "a", "c"], id="two ids swapped"),
        pytest.param(["a", "zz"], id="an id the raw rows lack"),
        pytest.param(["a", "d"], id="an id past the window"),
    ],
)
def test_predictions_out_of_raw_order_are_refused_before_their_piece_is_joined(scored):
    raw = _raw(["a", "b", "c", "x1", "x2", "x3", "x4", "d"], list("ABCWXYZD"), [1.0] * 8)
    predictions = _predictions(scored, [0.5] * len(scored))
    predictions_schema, raw_schema = _schemas()

    joined = joined_in_raw_order(
        predictions.to_batches(max_chunksize=1), predictions_schema, raw.to_batches(max_chunksize=2), raw_schema, "transaction_id", 3
    )
    assert next(joined).column("transaction_id").to_pylist() == [scored[0]]
    if scored[1] == "a":
        return
    with pytest.raises(OutOfRawOrder):
        list(joined)


def _published(url: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return pd.read_sql("select * from predictions order by dt, transaction_id", conn)
    finally:
        engine.dispose()


def test_a_day_published_in_chunks_of_7_rows_is_the_same_in_the_database_as_in_one(pipeline_settings, tmp_path):
    day = "2025-01-03"
    defs = build_definitions(pipeline_settings)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    everything = dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")
    with dg.instance_for_test() as instance:
        whole = dg.materialize(assets, resources=build_resources(pipeline_settings), partition_key=day, instance=instance, selection=everything)
        chunked_settings = dataclasses.replace(
            pipeline_settings, day_chunk_rows=7, predictions_db_url=f"sqlite:///{tmp_path / 'chunked.db'}"
        )
        chunked = dg.materialize(
            assets,
            resources=build_resources(chunked_settings),
            partition_key=day,
            instance=instance,
            selection=dg.AssetSelection.assets("published_predictions"),
        )

    rows = materializations(whole, "published_predictions")[day].metadata["row_count"].value
    assert materializations(whole, "published_predictions")[day].metadata["chunks"].value == 1
    chunked_meta = materializations(chunked, "published_predictions")[day].metadata
    assert chunked_meta["row_count"].value == rows > 1000
    # Pieces of 7 predictions, read beside the raw rows in the order of the day.
    assert rows / 7 * 0.9 < chunked_meta["chunks"].value <= -(-rows // 7)
    expected = _published(pipeline_settings.predictions_db_url)
    assert len(expected) == rows and expected["scoring_run_id"].notna().all()
    pd.testing.assert_frame_equal(_published(chunked_settings.predictions_db_url), expected)


def test_publishing_a_day_whose_raw_rows_are_gone_names_them_and_what_to_run(pipeline_settings):
    day = "2025-01-03"
    defs = build_definitions(pipeline_settings)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    resources = build_resources(pipeline_settings)
    with dg.instance_for_test() as instance:
        upstream = ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot", "predictions"]
        dg.materialize(assets, resources=resources, partition_key=day, instance=instance, selection=upstream)
        PartitionedParquetStore(pipeline_settings.storage_uri).delete_partition("raw_transactions", day)
        result = dg.materialize(
            assets,
            resources=resources,
            partition_key=day,
            instance=instance,
            selection=dg.AssetSelection.assets("published_predictions"),
            raise_on_error=False,
        )
    assert not result.success
    failure = result.failure_data_for_node("daily_pipeline").error.message
    assert f"raw_transactions for {day} is not in storage (never materialized)" in failure
    assert f"dg launch --assets '+published_predictions' --partition {day}" in failure


def test_predictions_not_in_raw_order_are_published_through_buckets(pipeline_settings, tmp_path):
    # As a big day scored before its features kept the order of its rows: the same rows, in another order.
    day = "2025-01-03"
    defs = build_definitions(pipeline_settings)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    everything = dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model")
    with dg.instance_for_test() as instance:
        dg.materialize(assets, resources=build_resources(pipeline_settings), partition_key=day, instance=instance, selection=everything)
        store = PartitionedParquetStore(pipeline_settings.storage_uri)
        stored = store.read_partition("predictions", day)
        store.write_partition("predictions", day, stored.take(pa.array(np.arange(stored.num_rows)[::-1])))
        chunked_settings = dataclasses.replace(
            pipeline_settings, day_chunk_rows=50, predictions_db_url=f"sqlite:///{tmp_path / 'chunked.db'}"
        )
        chunked = dg.materialize(
            assets,
            resources=build_resources(chunked_settings),
            partition_key=day,
            instance=instance,
            selection=dg.AssetSelection.assets("published_predictions"),
        )
        logged = [e.user_message for e in instance.all_logs(chunked.run_id)]

    assert any("not in the order of the day's raw rows: joined through buckets of ids" in m for m in logged)
    rows = materializations(chunked, "published_predictions")[day].metadata["row_count"].value
    assert rows == stored.num_rows
    pd.testing.assert_frame_equal(_published(chunked_settings.predictions_db_url), _published(pipeline_settings.predictions_db_url))
