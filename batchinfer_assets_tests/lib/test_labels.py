"""Reading label files: latest label per id, what was superseded is counted, bad files are named."""

import datetime as dt
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchinfer_assets.lib.labels import (
    LABEL_COLUMNS,
    NEVER_LABELLED_SHARE,
    LabelsDataError,
    conform_labels,
    latest_labels,
    synthetic_label_schedule,
)
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.lib.synthetic import generate_day
from batchinfer_assets.resources.labels import ParquetLabelsResource, SyntheticLabelsResource

DAY = dt.date(2025, 3, 4)


def _labels(ids, fraud, at) -> pd.DataFrame:
    return pd.DataFrame({"transaction_id": ids, "is_fraud": fraud, "labelled_at": pd.to_datetime(at, utc=True)})


def _land(root, frame: pd.DataFrame, name: str, day: dt.date = DAY):
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    columns = {
        c: pa.array(v.dt.tz_convert(None).to_numpy(), pa.timestamp("us", tz="UTC")) if c == "labelled_at" else pa.array(v)
        for c, v in frame.items()
    }
    pq.write_table(pa.table(columns), folder / name)
    return folder / name


def test_latest_label_wins_and_duplicates_and_contradictions_are_counted():
    first = _labels(["a", "b", "c"], [0, 1, 0], ["2025-03-05", "2025-03-05", "2025-03-05"])
    # Later: a flips to fraud (contradictory), b repeated with the same label (duplicate only), d new.
    later = _labels(["a", "b", "d"], [1, 1, 0], ["2025-03-20", "2025-03-21", "2025-03-06"])
    day = latest_labels([conform_labels(first, "f1"), conform_labels(later, "f2")], ["f1", "f2"])
    assert day.labels.set_index("transaction_id")["is_fraud"].to_dict() == {"a": 1, "b": 1, "c": 0, "d": 0}
    assert (day.rows_read, day.duplicates, day.contradictory) == (6, 2, 1)
    assert day.latest_labelled_at == pd.Timestamp("2025-03-21", tz="UTC")


def test_an_older_label_in_a_later_file_does_not_win():
    newer = _labels(["a"], [1], ["2025-03-20"])
    older = _labels(["a"], [0], ["2025-03-06"])
    day = latest_labels([conform_labels(newer, "f1"), conform_labels(older, "f2")], ["f1", "f2"])
    assert day.labels["is_fraud"].tolist() == [1] and day.contradictory == 1


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (_labels(["a"], [1], ["2025-03-05"]).drop(columns="labelled_at"), "required column(s) missing: labelled_at"),
        (_labels(["a"], [2], ["2025-03-05"]), "column 'is_fraud' must hold 0 or 1, found 2"),
        (_labels(["a"], ["yes"], ["2025-03-05"]), "column 'is_fraud' must hold 0 or 1"),
        (_labels([None], [1], ["2025-03-05"]), "column 'transaction_id' has 1 null value(s)"),
        (_labels(["a"], [1], ["2025-03-05"]).assign(labelled_at="2025-03-05"), "column 'labelled_at' must be a timestamp"),
    ],
)
def test_unusable_labels_name_the_file_and_the_column(frame, message):
    with pytest.raises(LabelsDataError, match=rf"labels file day/x.parquet: {re.escape(message)}"):
        conform_labels(frame, "day/x.parquet")


def test_bool_labels_and_naive_times_are_accepted():
    frame = pd.DataFrame({"transaction_id": ["a"], "is_fraud": [True], "labelled_at": [pd.Timestamp("2025-03-05 10:00")]})
    out = conform_labels(frame, "f")
    assert out["is_fraud"].tolist() == [1] and str(out["labelled_at"].dtype) == "datetime64[us, UTC]"


def test_parquet_zone_reads_every_file_and_its_fingerprint_follows_new_files(tmp_path):
    resource = ParquetLabelsResource(uri=str(tmp_path))
    assert resource.labels_for(DAY).labels.empty, "no folder yet: no labels, not an error"
    empty = resource.label_files_fingerprint(DAY)

    _land(tmp_path, _labels(["a", "b"], [0, 1], ["2025-03-05"] * 2).assign(extra=1), "part-1.parquet")
    first = resource.label_files_fingerprint(DAY)
    _land(tmp_path, _labels(["a"], [1], ["2025-03-09"]), "part-2.parquet")
    second = resource.label_files_fingerprint(DAY)

    assert len({empty, first, second}) == 3
    assert resource.label_files_fingerprint(DAY) == second, "unchanged files: unchanged fingerprint"
    day = resource.labels_for(DAY)
    assert list(day.labels.columns) == list(LABEL_COLUMNS)
    assert day.labels["is_fraud"].tolist() == [1, 1] and day.contradictory == 1
    assert [os.path.basename(s) for s in day.sources] == ["part-1.parquet", "part-2.parquet"]


def test_parquet_file_without_a_column_fails_naming_file_and_column(tmp_path):
    _land(tmp_path, _labels(["a"], [0], ["2025-03-05"]), "good.parquet")
    bad = _land(tmp_path, _labels(["a"], [0], ["2025-03-05"]).drop(columns="is_fraud"), "bad.parquet")
    with pytest.raises(LandingDataError, match=rf"labels file {bad}: required column\(s\) missing: is_fraud"):
        ParquetLabelsResource(uri=str(tmp_path)).labels_for(DAY)


def test_synthetic_labels_are_the_landing_zones_truth_released_over_weeks():
    rows = 4000
    schedule = synthetic_label_schedule(DAY, rows, seed=5)
    truth = generate_day(DAY, rows, seed=5)
    assert schedule["transaction_id"].tolist() == truth["transaction_id"].tolist()
    assert (schedule["is_fraud"].to_numpy() == truth["is_fraud"].to_numpy()).all()
    pd.testing.assert_frame_equal(schedule, synthetic_label_schedule(DAY, rows, seed=5))

    delay_days = (schedule["labelled_at"] - truth["event_time"]).dt.total_seconds() / 86_400
    never = delay_days.isna().mean()
    assert abs(never - NEVER_LABELLED_SHARE) < 0.01
    known = delay_days.dropna()
    assert (known > 0).all() and known.max() <= 60
    # Most within a few days, a tail beyond four weeks.
    assert 0.5 < (known <= 3).mean() < 0.75 and (known > 28).sum() > 0


def test_synthetic_release_follows_the_clock():
    def resource(now):
        return SyntheticLabelsResource(rows_per_day=2000, seed=5, now=now)

    early, later, done = resource("2025-03-05T00:00"), resource("2025-03-12T00:00"), resource("2026-01-01T00:00+00:00")
    n_early, n_later, n_done = (len(r.labels_for(DAY).labels) for r in (early, later, done))
    assert 0 < n_early < n_later < n_done < 2000
    assert n_done == pytest.approx(2000 * (1 - NEVER_LABELLED_SHARE), abs=40)
    assert early.label_files_fingerprint(DAY) != later.label_files_fingerprint(DAY)
    # Past the longest delay nothing more is released: the fingerprint stops changing.
    assert done.label_files_fingerprint(DAY) == resource("2027-06-01").label_files_fingerprint(DAY)
    assert resource("2025-03-05T23:59").label_files_fingerprint(DAY) == early.label_files_fingerprint(DAY), "one drop a day"
    assert (early.labels_for(DAY).labels["labelled_at"] <= pd.Timestamp("2025-03-05", tz="UTC")).all()
    assert np.isin(early.labels_for(DAY).labels["transaction_id"], done.labels_for(DAY).labels["transaction_id"]).all()


def test_a_label_from_the_future_or_before_the_day_never_wins_and_is_counted():
    real = _labels(["a", "b"], [1, 0], ["2025-03-06", "2025-03-06"])
    future = _labels(["a"], [0], ["2030-01-01"])
    skewed = _labels(["b"], [1], ["2025-03-20 12:04"])  # within the clock-skew allowance of `now`
    early = _labels(["b"], [1], ["2025-03-03 23:59"])
    frames = [conform_labels(f, "f") for f in (real, future, skewed, early)]

    day = latest_labels(frames, ["f1", "f2", "f3", "f4"], day=DAY, now=pd.Timestamp("2025-03-20 12:00", tz="UTC"))

    assert day.labels.set_index("transaction_id")["is_fraud"].to_dict() == {"a": 1, "b": 1}
    assert (day.future, day.before_transaction_day, day.rows_read) == (1, 1, 5)
    assert day.latest_labelled_at == pd.Timestamp("2025-03-20 12:04", tz="UTC")
