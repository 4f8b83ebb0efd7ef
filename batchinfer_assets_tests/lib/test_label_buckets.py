"""A day's labels past a chunk: read piece by piece into id-range buckets on disk, each reduced to the latest label per
id, together the day's labels as if reduced whole (the same rows, counts and content hash)."""

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchinfer_assets.lib.hashing import ContentHasher, table_content_hash
from batchinfer_assets.lib.label_buckets import IdSample, SpilledLabels, gather_labels, id_cuts
from batchinfer_assets.lib.labels import DayLabels, conform_labels, labels_schema, labels_table, latest_labels, read_label_pieces
from batchinfer_assets.lib.landing import DayFile
from batchinfer_assets.lib.spill import DayBuckets

DAY = dt.date(2025, 3, 4)
COLUMNS = {"id_column": "transaction_id", "label_column": "is_fraud"}
NOW = pd.Timestamp("2025-03-30", tz="UTC")


def _labels(ids, fraud, at) -> pd.DataFrame:
    return conform_labels(
        pd.DataFrame({"transaction_id": ids, "is_fraud": fraud, "labelled_at": pd.to_datetime(at, utc=True)}), "t", **COLUMNS
    )


def _day_of_labels() -> list[tuple[str, pd.DataFrame]]:
    """Three files' pieces: 300 ids labelled once (t-000 .. t-299); ids t-000..t-039 relabelled later with the other
    label (40 contradictory), t-040..t-059 again with the same label (20 duplicates only); 5 labels dated in the
    future and 7 before the day, never kept."""
    ids = [f"t-{i:03d}" for i in range(300)]
    first = np.arange(300) % 2
    pieces = [
        ("f1", _labels(ids[:150], first[:150], ["2025-03-05"] * 150)),
        ("f1", _labels(ids[150:], first[150:], ["2025-03-06"] * 150)),
        ("f2", _labels(ids[:40], 1 - first[:40], ["2025-03-20"] * 40)),
        ("f2", _labels(ids[40:60], first[40:60], ["2025-03-21"] * 20)),
        ("f3", _labels(ids[100:105], [1] * 5, ["2031-01-01"] * 5)),
        ("f3", _labels(ids[200:207], [1] * 7, ["2025-03-03 12:00"] * 7)),
    ]
    return pieces


def _spilled(pieces, chunk: int, tmp_path, buckets: int) -> SpilledLabels:
    spilled = gather_labels(pieces, **COLUMNS, chunk_rows=chunk, spill_dir=tmp_path, day=DAY, now=NOW)
    assert isinstance(spilled, SpilledLabels)
    spilled.split(buckets)
    return spilled


def test_labels_within_a_chunk_are_reduced_whole_as_before():
    pieces = _day_of_labels()
    held = gather_labels(pieces, **COLUMNS, chunk_rows=10_000, day=DAY, now=NOW)
    assert isinstance(held, DayLabels)
    whole = latest_labels([f for _, f in pieces], ["f1", "f2", "f3"], **COLUMNS, day=DAY, now=NOW)
    pd.testing.assert_frame_equal(held.labels, whole.labels)
    assert held.sources == ("f1", "f2", "f3")


@pytest.mark.parametrize("buckets", [1, 2, 7])
def test_labels_past_a_chunk_split_by_id_range_are_the_days_labels_in_order(tmp_path, buckets):
    with _spilled(_day_of_labels(), 100, tmp_path, buckets) as spilled:
        assert (spilled.rows_read, spilled.future, spilled.before_day) == (300 + 60 + 12, 5, 7)
        assert spilled.count == buckets
        parts = [spilled.bucket(k) for k in range(spilled.count)]
    labels = pd.concat([p.labels for p in parts], ignore_index=True)
    assert labels["transaction_id"].tolist() == [f"t-{i:03d}" for i in range(300)], "every id once, sorted"
    expected = np.arange(300) % 2
    expected[:40] = 1 - expected[:40]  # the later, other label won
    assert labels["is_fraud"].tolist() == expected.tolist()
    assert sum(p.duplicates for p in parts) == 60 and sum(p.contradictory for p in parts) == 40
    assert max(p.latest_labelled_at for p in parts) == pd.Timestamp("2025-03-21", tz="UTC")
    # Each bucket a range of ids: the last of one below the first of the next.
    bounds = [(p.labels["transaction_id"].iloc[0], p.labels["transaction_id"].iloc[-1]) for p in parts if len(p.labels)]
    assert all(high < low for (_, high), (low, _) in zip(bounds, bounds[1:]))
    # The buckets hashed in order give the hash of the whole day's labels.
    hasher = ContentHasher()
    for part in parts:
        hasher.update(labels_table(part))
    whole = latest_labels([f for _, f in _day_of_labels()], [], **COLUMNS, day=DAY, now=NOW)
    assert hasher.hexdigest() == table_content_hash(labels_table(whole))
    assert not list(tmp_path.iterdir()), "the spill's files went with it"


def test_an_id_equal_to_a_cut_goes_above_it_and_all_its_labels_share_a_bucket(tmp_path):
    pieces = [("f", _labels(["a", "b", "c", "d"], [0, 0, 0, 0], ["2025-03-05"] * 4)), ("g", _labels(["c"], [1], ["2025-03-09"]))]
    with _spilled(pieces, 2, tmp_path, 2) as spilled:
        # Five ids sampled (a, b, c, c, d): the cut of two buckets is the third.
        assert spilled.cuts.tolist() == ["c"]
        assert spilled.bucket_of(pa.array(["c", "a", "d", "zz", "", "bz"])).tolist() == [1, 0, 1, 1, 0, 0]
        c = [spilled.bucket(k) for k in range(2)]
    kept = pd.concat([p.labels for p in c]).set_index("transaction_id")["is_fraud"].to_dict()
    assert kept == {"a": 0, "b": 0, "c": 1, "d": 0}
    assert sum(p.contradictory for p in c) == 1


def test_an_id_sample_keeps_every_stride_th_position_and_stays_bounded():
    sample = IdSample(target=4)
    ids = [f"i{k:02d}" for k in range(50)]
    for start in range(0, 50, 7):  # pieces of 7: the stride carries across them
        sample.add(pa.array(ids[start : start + 7]))
    # 50 ids, at most 8 kept: the stride doubled to 8 (positions 0, 8, ..., 48: 7 ids).
    assert sample.stride == 8 and sample.seen == 50
    assert sample.at_stride(8).tolist() == [ids[k] for k in range(0, 50, 8)]
    assert sample.at_stride(16).tolist() == [ids[k] for k in range(0, 50, 16)]
    with pytest.raises(ValueError, match="not a multiple"):
        sample.at_stride(4)


def test_cuts_pool_the_samples_at_one_stride():
    labels, predictions = IdSample(target=1000), IdSample(target=1000)
    labels.add([f"a{k:04d}" for k in range(100)])  # labels name only a narrow range of ids ...
    predictions.add([f"{c}{k:04d}" for c in "abcdefghij" for k in range(100)])  # ... the predictions ten times more
    cuts = id_cuts([labels, predictions], 4)
    # Pooled, 1,100 ids sorted: a at 0-199 (each twice), b at 200-299, c at 300-399, ...; cut at 275, 550 and 825.
    assert cuts.tolist() == ["b0075", "e0050", "h0025"]
    assert id_cuts([labels], 1).size == 0 and id_cuts([IdSample()], 3).size == 0


def test_a_chunk_crossed_mid_piece_spills_everything_read(tmp_path):
    pieces = [("f", _labels([f"x{k}" for k in range(3)], [0, 1, 0], ["2025-03-05"] * 3)) for _ in range(3)]
    spilled = gather_labels(pieces, **COLUMNS, chunk_rows=4, spill_dir=tmp_path)
    with spilled:
        spilled.split(1)
        only = spilled.bucket(0)
    assert (spilled.rows_read, only.duplicates, only.contradictory, len(only.labels)) == (9, 6, 0, 3)


def test_label_files_are_read_in_pieces_of_batch_rows_and_an_empty_file_counts(tmp_path):
    table = pa.table(
        {
            "transaction_id": [f"t{k}" for k in range(5)],
            "is_fraud": pa.array([0, 1, 0, 1, 0], pa.int8()),
            "labelled_at": pa.array([dt.datetime(2025, 3, 5)] * 5, pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "b.parquet")

    def day_file(name):
        path = tmp_path / name
        return DayFile(name, path.stat().st_size, "m", lambda: _local(path))

    pieces = list(read_label_pieces([day_file("a.parquet"), day_file("b.parquet")], **COLUMNS, batch_rows=2))
    assert [(name, len(f)) for name, f in pieces] == [("a.parquet", 2), ("a.parquet", 2), ("a.parquet", 1), ("b.parquet", 0)]
    assert pd.concat([f for _, f in pieces])["transaction_id"].tolist() == [f"t{k}" for k in range(5)]


class _local:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        return False


def test_a_bucket_is_taken_alone_and_an_empty_one_has_the_schema(tmp_path):
    schema = labels_schema(**COLUMNS)
    rows = pa.table(
        {"transaction_id": ["a", "b", "c"], "is_fraud": pa.array([0, 1, 0], pa.int8()), "labelled_at": pa.array([0, 0, 0], pa.timestamp("us", tz="UTC"))},
        schema=schema,
    )
    with DayBuckets(3, schema, tmp_path) as buckets:
        buckets.add(rows, np.array([2, 0, 2]))
        assert buckets.take(2).column("transaction_id").to_pylist() == ["a", "c"]
        assert buckets.take(1).schema == schema and buckets.take(1).num_rows == 0
        assert buckets.take(0).column("transaction_id").to_pylist() == ["b"]
        assert buckets.take(2).num_rows == 0, "a bucket taken is gone"


def test_a_synthetic_drop_past_a_chunk_is_spilled_and_split_as_a_zones_labels_are(tmp_path):
    from batchinfer_assets.domains.card_transactions import domain as card
    from batchinfer_assets.resources.labels_zone import SyntheticLabelsResource

    resource = SyntheticLabelsResource(rows_per_day=400, now="2025-06-01")
    whole = resource.labels_for(DAY, card)
    assert len(whole.labels) > 100, "most of the day's rows are labelled by June"
    assert isinstance(resource.labels_within(DAY, card, chunk_rows=10_000), DayLabels)
    with resource.labels_within(DAY, card, chunk_rows=100, spill_dir=tmp_path) as spilled:
        assert isinstance(spilled, SpilledLabels) and spilled.sources == whole.sources
        spilled.split(3)
        parts = [spilled.bucket(k) for k in range(3)]
    pd.testing.assert_frame_equal(pd.concat([p.labels for p in parts], ignore_index=True), whole.labels)
    assert sum(p.duplicates for p in parts) == whole.duplicates and spilled.rows_read == whole.rows_read
