"""Reading label files: latest label per id, what was superseded is counted, bad files are named."""

import datetime as dt
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.domains.card_transactions.labels import NEVER_LABELLED_SHARE
from batchinfer_assets.lib.labels import LabelsDataError, conform_labels, latest_labels
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.resources.labels_zone import NoLabelsResource, ParquetLabelsResource, SyntheticLabelsResource
from batchinfer_assets_tests.customer_days import domain as CUSTOMER_DAYS
from batchinfer_assets_tests.customer_days import without_source as WITHOUT_SOURCE

DAY = dt.date(2025, 3, 4)
CARD_COLUMNS = {"id_column": "transaction_id", "label_column": "is_fraud"}


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
    frames = [conform_labels(first, "f1", **CARD_COLUMNS), conform_labels(later, "f2", **CARD_COLUMNS)]
    day = latest_labels(frames, ["f1", "f2"], **CARD_COLUMNS)
    assert day.labels.set_index("transaction_id")["is_fraud"].to_dict() == {"a": 1, "b": 1, "c": 0, "d": 0}
    assert (day.rows_read, day.duplicates, day.contradictory) == (6, 2, 1)
    assert day.latest_labelled_at == pd.Timestamp("2025-03-21", tz="UTC")


def test_an_older_label_in_a_later_file_does_not_win():
    newer = _labels(["a"], [1], ["2025-03-20"])
    older = _labels(["a"], [0], ["2025-03-06"])
    frames = [conform_labels(newer, "f1", **CARD_COLUMNS), conform_labels(older, "f2", **CARD_COLUMNS)]
    day = latest_labels(frames, ["f1", "f2"], **CARD_COLUMNS)
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
        conform_labels(frame, "day/x.parquet", **CARD_COLUMNS)


def test_bool_labels_and_naive_times_are_accepted():
    frame = pd.DataFrame({"transaction_id": ["a"], "is_fraud": [True], "labelled_at": [pd.Timestamp("2025-03-05 10:00")]})
    out = conform_labels(frame, "f", **CARD_COLUMNS)
    assert out["is_fraud"].tolist() == [1] and str(out["labelled_at"].dtype) == "datetime64[us, UTC]"


def test_parquet_zone_reads_every_file_and_its_fingerprint_follows_new_files(tmp_path):
    resource = ParquetLabelsResource(uri=str(tmp_path))
    assert resource.labels_for(DAY, CARD).labels.empty, "no folder yet: no labels, not an error"
    empty = resource.label_files_fingerprint(DAY, CARD)

    _land(tmp_path, _labels(["a", "b"], [0, 1], ["2025-03-05"] * 2).assign(extra=1), "part-1.parquet")
    first = resource.label_files_fingerprint(DAY, CARD)
    _land(tmp_path, _labels(["a"], [1], ["2025-03-09"]), "part-2.parquet")
    second = resource.label_files_fingerprint(DAY, CARD)

    assert len({empty, first, second}) == 3
    assert resource.label_files_fingerprint(DAY, CARD) == second, "unchanged files: unchanged fingerprint"
    day = resource.labels_for(DAY, CARD)
    assert list(day.labels.columns) == ["transaction_id", "is_fraud", "labelled_at"]
    assert day.labels["is_fraud"].tolist() == [1, 1] and day.contradictory == 1
    assert [os.path.basename(s) for s in day.sources] == ["part-1.parquet", "part-2.parquet"]


def test_parquet_file_without_a_column_fails_naming_file_and_column(tmp_path):
    _land(tmp_path, _labels(["a"], [0], ["2025-03-05"]), "good.parquet")
    bad = _land(tmp_path, _labels(["a"], [0], ["2025-03-05"]).drop(columns="is_fraud"), "bad.parquet")
    with pytest.raises(LandingDataError, match=rf"labels file {bad}: required column\(s\) missing: is_fraud"):
        ParquetLabelsResource(uri=str(tmp_path)).labels_for(DAY, CARD)


def test_synthetic_release_follows_the_clock():
    def resource(now):
        return SyntheticLabelsResource(rows_per_day=2000, seed=5, now=now)

    early, later, done = resource("2025-03-05T00:00"), resource("2025-03-12T00:00"), resource("2026-01-01T00:00+00:00")
    n_early, n_later, n_done = (len(r.labels_for(DAY, CARD).labels) for r in (early, later, done))
    assert 0 < n_early < n_later < n_done < 2000
    assert n_done == pytest.approx(2000 * (1 - NEVER_LABELLED_SHARE), abs=40)
    assert early.label_files_fingerprint(DAY, CARD) != later.label_files_fingerprint(DAY, CARD)
    # Past the longest delay nothing more is released: the fingerprint stops changing.
    assert done.label_files_fingerprint(DAY, CARD) == resource("2027-06-01").label_files_fingerprint(DAY, CARD)
    assert resource("2025-03-05T23:59").label_files_fingerprint(DAY, CARD) == early.label_files_fingerprint(DAY, CARD), "one drop a day"
    assert (early.labels_for(DAY, CARD).labels["labelled_at"] <= pd.Timestamp("2025-03-05", tz="UTC")).all()
    assert np.isin(early.labels_for(DAY, CARD).labels["transaction_id"], done.labels_for(DAY, CARD).labels["transaction_id"]).all()


def test_a_label_from_the_future_or_before_the_day_never_wins_and_is_counted():
    real = _labels(["a", "b"], [1, 0], ["2025-03-06", "2025-03-06"])
    future = _labels(["a"], [0], ["2030-01-01"])
    skewed = _labels(["b"], [1], ["2025-03-20 12:04"])  # within the clock-skew allowance of `now`
    early = _labels(["b"], [1], ["2025-03-03 23:59"])
    frames = [conform_labels(f, "f", **CARD_COLUMNS) for f in (real, future, skewed, early)]

    day = latest_labels(frames, ["f1", "f2", "f3", "f4"], **CARD_COLUMNS, day=DAY, now=pd.Timestamp("2025-03-20 12:00", tz="UTC"))

    assert day.labels.set_index("transaction_id")["is_fraud"].to_dict() == {"a": 1, "b": 1}
    assert (day.future, day.before_day, day.rows_read) == (1, 1, 5)
    assert day.latest_labelled_at == pd.Timestamp("2025-03-20 12:04", tz="UTC")


# --- another domain: its own id and label columns, its own synthetic source -----------------------------------------


def _customer_labels(ids, churned, at) -> pd.DataFrame:
    return pd.DataFrame({"customer_day_id": ids, "churned": churned, "labelled_at": pd.to_datetime(at, utc=True)})


def test_a_domains_labels_zone_is_read_with_its_own_id_and_label_columns(tmp_path):
    resource = ParquetLabelsResource(uri=str(tmp_path))
    empty = resource.labels_for(DAY, CUSTOMER_DAYS)
    assert empty.labels.empty and list(empty.labels.columns) == ["customer_day_id", "churned", "labelled_at"]
    _land(tmp_path, _customer_labels(["c1", "c2"], [0, 0], ["2025-03-20"] * 2), "part-1.parquet")
    first = resource.label_files_fingerprint(DAY, CUSTOMER_DAYS)
    _land(tmp_path, _customer_labels(["c1", "c3"], [1, 0], ["2025-04-02", "2025-03-02"]), "part-2.parquet")

    day = resource.labels_for(DAY, CUSTOMER_DAYS)

    assert resource.label_files_fingerprint(DAY, CUSTOMER_DAYS) != first
    assert list(day.labels.columns) == ["customer_day_id", "churned", "labelled_at"]
    assert (day.id_column, day.label_column) == ("customer_day_id", "churned")
    # c1 churned after all (latest wins, counted as contradictory); c3's label predates its day: ignored and counted.
    assert day.labels.set_index("customer_day_id")["churned"].to_dict() == {"c1": 1, "c2": 0}
    assert (day.rows_read, day.duplicates, day.contradictory, day.before_day) == (4, 1, 1, 1)


@pytest.mark.parametrize(
    ("columns", "missing"),
    [
        (["customer_day_id", "labelled_at"], "churned"),
        # The card's columns under another domain: the domain's names are the ones required.
        (["transaction_id", "is_fraud", "labelled_at"], "customer_day_id, churned"),
    ],
)
def test_a_labels_file_without_the_domains_columns_is_refused_naming_them(tmp_path, columns, missing):
    frame = _customer_labels(["c1"], [1], ["2025-03-20"]).assign(transaction_id="c1", is_fraud=1)
    bad = _land(tmp_path, frame[columns], "bad.parquet")
    with pytest.raises(LabelsDataError, match=rf"labels file {bad}: required column\(s\) missing: {missing}$"):
        ParquetLabelsResource(uri=str(tmp_path)).labels_for(DAY, CUSTOMER_DAYS)


def test_a_domains_label_column_must_hold_0_or_1():
    frame = _customer_labels(["c1", "c2"], [1, 3], ["2025-03-20"] * 2)
    with pytest.raises(LabelsDataError, match=r"labels file f: column 'churned' must hold 0 or 1, found 3"):
        conform_labels(frame, "f", id_column="customer_day_id", label_column="churned")


def test_synthetic_labels_of_a_domain_are_its_sources_schedule_released_by_the_clock():
    rows, seed = 600, 3
    schedule = CUSTOMER_DAYS.synthetic.label_schedule(DAY, rows, seed)

    def released(now: str):
        resource = SyntheticLabelsResource(rows_per_day=rows, seed=seed, now=now)
        return resource.labels_for(DAY, CUSTOMER_DAYS), resource.label_files_fingerprint(DAY, CUSTOMER_DAYS)

    (early, early_print), (late, late_print), (done, done_print) = (
        released(now) for now in ("2025-04-10T09:00", "2025-05-01", "2026-01-01")
    )
    for labels, cutoff in ((early, "2025-04-10"), (late, "2025-05-01"), (done, "2026-01-01")):
        # Exactly the schedule's rows known by the last daily drop, in the domain's columns and conformed types.
        expected = schedule[schedule["labelled_at"] <= pd.Timestamp(cutoff)].sort_values("customer_day_id")
        assert labels.labels["customer_day_id"].tolist() == expected["customer_day_id"].tolist()
        assert labels.labels["churned"].tolist() == expected["churned"].astype(int).tolist()
        assert str(labels.labels["labelled_at"].dtype) == "datetime64[us, UTC]"
    assert 0 < len(early.labels) < len(late.labels) < len(done.labels) == schedule["labelled_at"].notna().sum()
    assert len({early_print, late_print, done_print}) == 3
    # The fingerprint follows the domain's own longest delay (75 days), not the card source's 60: still changing
    # on day 70, and fixed after day 76.
    assert released("2025-05-13")[1] != released("2025-05-14")[1]
    assert released("2025-05-20")[1] == released("2027-01-01")[1] == done_print


def test_a_domain_without_a_synthetic_source_has_no_synthetic_labels():
    with pytest.raises(ValueError, match="domain 'customer_days_zone' has no synthetic source.*set BATCHINFER_LABELS_URI"):
        SyntheticLabelsResource(rows_per_day=10).labels_for(DAY, WITHOUT_SOURCE)
    none = NoLabelsResource().labels_for(DAY, WITHOUT_SOURCE)
    assert none.labels.empty and list(none.labels.columns) == ["customer_day_id", "churned", "labelled_at"]
