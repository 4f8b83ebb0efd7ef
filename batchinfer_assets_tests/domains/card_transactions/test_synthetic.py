"""The synthetic transaction source: determinism, contract conformance, realism, planted fraud and slow shift."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchinfer_assets
from batchinfer_assets.domain import DEFAULT_SEED
from batchinfer_assets.domains.card_transactions.synthetic import LABEL_COLUMN, generate_day, generate_days
from batchinfer_assets.schemas import split_valid_rows
from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.resources.prediction_db import published_text_lengths

CARD_LENGTHS = published_text_lengths(CARD)
LANDING_COLUMNS = tuple(CARD.landing_columns)

REPO_ROOT = Path(batchinfer_assets.__file__).resolve().parent.parent


def _mean_over(days: list[dt.date], rows: int, stat) -> float:
    return float(np.mean([stat(generate_day(d, rows)) for d in days]))


def test_landing_columns_follow_the_contract_order():
    assert LANDING_COLUMNS == (
        "transaction_id",
        "event_time",
        "customer_id",
        "merchant_category",
        "amount",
        "currency",
        "channel",
        "country",
    )
    assert LABEL_COLUMN == "is_fraud"
    assert DEFAULT_SEED == 20250101


@pytest.mark.parametrize(
    ("day", "rows"),
    [
        (dt.date(2025, 1, 1), 2_000),  # a Wednesday, first partition
        (dt.date(2025, 3, 8), 500),  # a Saturday
        (dt.date(2024, 12, 20), 300),  # before the shift epoch (demo training days)
        (dt.date(2025, 12, 31), 1_000),
        (dt.date(2028, 2, 29), 50),  # leap day, far in the future
    ],
)
def test_generated_day_has_contract_dtypes_and_passes_the_landing_schema(day, rows):
    frame = generate_day(day, rows)

    assert list(frame.columns) == [*LANDING_COLUMNS, LABEL_COLUMN]
    assert len(frame) == rows
    assert isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0
    for column in [c for c, kind in CARD.landing_columns.items() if kind == pa.string()]:
        assert frame[column].dtype == pd.StringDtype(), column
    assert frame["event_time"].dtype == "datetime64[us, UTC]"
    assert frame["amount"].dtype == np.float64
    assert frame[LABEL_COLUMN].dtype == np.int8
    assert set(frame[LABEL_COLUMN].unique()) <= {0, 1}
    assert (frame["amount"] >= 0).all()
    assert frame["event_time"].dt.date.eq(day).all()
    assert frame["transaction_id"].is_unique
    assert frame.sort_values(["event_time", "transaction_id"]).index.equals(frame.index)

    valid, quarantined = split_valid_rows(frame, day, CARD, CARD_LENGTHS)
    assert len(quarantined) == 0
    assert len(valid) == rows


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    day=st.dates(min_value=dt.date(2023, 1, 1), max_value=dt.date(2030, 12, 31)),
    rows=st.integers(min_value=0, max_value=400),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_any_day_rows_and_seed_give_a_valid_sorted_day(day, rows, seed):
    frame = generate_day(day, rows, seed=seed)

    assert len(frame) == rows
    assert frame["event_time"].is_monotonic_increasing
    assert frame["transaction_id"].str.startswith(f"{day:%Y%m%d}-").all()
    assert split_valid_rows(frame, day, CARD, CARD_LENGTHS)[1].empty


@pytest.mark.parametrize("rows", [1, 6, 19, 20, 45])
def test_tiny_days_have_exactly_the_requested_rows(rows):
    for offset in range(0, 365, 5):
        assert len(generate_day(dt.date(2025, 1, 1) + dt.timedelta(days=offset), rows, seed=offset)) == rows


def test_same_arguments_give_the_same_frame_in_a_separate_process(tmp_path):
    day, rows, seed = dt.date(2025, 2, 14), 3_000, 7
    child_file = tmp_path / "child.parquet"
    code = (
        "import datetime as dt, sys\n"
        "from batchinfer_assets.domains.card_transactions.synthetic import generate_day\n"
        f"generate_day(dt.date({day.year}, {day.month}, {day.day}), {rows}, seed={seed})"
        ".to_parquet(sys.argv[1], index=False)\n"
    )
    # A different hash seed proves nothing depends on Python's salted hash().
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(child_file)], check=True, env=env, timeout=120)

    here_file = tmp_path / "here.parquet"
    here = generate_day(day, rows, seed=seed)
    here.to_parquet(here_file, index=False)

    assert hashlib.sha256(child_file.read_bytes()).hexdigest() == hashlib.sha256(here_file.read_bytes()).hexdigest()
    pd.testing.assert_frame_equal(pd.read_parquet(child_file), pd.read_parquet(here_file))


def test_repeated_calls_are_identical():
    day = dt.date(2025, 5, 5)
    pd.testing.assert_frame_equal(generate_day(day, 2_000), generate_day(day, 2_000))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((dt.date(2025, 1, 1), DEFAULT_SEED), (dt.date(2025, 1, 2), DEFAULT_SEED)),
        ((dt.date(2025, 1, 1), DEFAULT_SEED), (dt.date(2025, 1, 1), DEFAULT_SEED + 1)),
        ((dt.date(2025, 6, 1), 1), (dt.date(2026, 6, 1), 1)),
    ],
)
def test_different_days_or_seeds_differ(a, b):
    first, second = generate_day(a[0], 2_000, seed=a[1]), generate_day(b[0], 2_000, seed=b[1])

    assert not np.array_equal(first["amount"].to_numpy(), second["amount"].to_numpy())
    assert not first["event_time"].dt.time.equals(second["event_time"].dt.time)


def test_customers_are_a_fixed_population_with_habits():
    first, second = generate_day(dt.date(2025, 4, 1), 8_000), generate_day(dt.date(2025, 4, 2), 8_000)

    shared = set(first["customer_id"]) & set(second["customer_id"])
    assert len(shared) > 0.7 * first["customer_id"].nunique()
    per_customer = first.groupby("customer_id").size()
    assert per_customer.median() >= 3
    assert per_customer.max() >= 4 * per_customer.median()
    # A customer's usual country is the same on both days.
    usual = [f.groupby("customer_id")["country"].agg(lambda s: s.mode().iloc[0]) for f in (first, second)]
    both = usual[0].index.intersection(usual[1].index)
    assert (usual[0][both] == usual[1][both]).mean() > 0.95
    assert first["country"].value_counts(normalize=True).index[0] == "US"


def test_day_has_an_hour_of_day_rhythm():
    frame = generate_days(dt.date(2025, 2, 3), dt.date(2025, 2, 9), 3_000)
    hours = frame["event_time"].dt.hour

    assert (hours.between(2, 4)).mean() < 0.25 * (hours.between(11, 13)).mean()
    weekend = frame["event_time"].dt.day_of_week >= 5
    assert hours[weekend].mean() != pytest.approx(hours[~weekend].mean(), abs=0.2)


@pytest.mark.parametrize("day", [dt.date(2025, 1, 15), dt.date(2025, 7, 4), dt.date(2025, 11, 29)])
def test_fraud_rate_is_in_range_and_fraud_looks_different(day):
    frame = generate_day(day, 20_000)
    fraud = frame[LABEL_COLUMN] == 1

    assert 0.01 <= fraud.mean() <= 0.035
    night = frame["event_time"].dt.hour < 6
    assert night[fraud].mean() > 3 * night[~fraud].mean()
    assert frame.loc[fraud, "amount"].median() > 2 * frame.loc[~fraud, "amount"].median()
    assert (frame.loc[fraud, "channel"] != "pos").mean() > (frame.loc[~fraud, "channel"] != "pos").mean() + 0.2


def test_slow_shift_is_visible_over_months_but_not_between_consecutive_days():
    online = lambda f: (f["channel"] == "online").mean()  # noqa: E731
    january = [dt.date(2025, 1, d) for d in (13, 14, 15)]
    december = [dt.date(2025, 12, d) for d in (8, 9, 10)]

    assert _mean_over(december, 5_000, online) - _mean_over(january, 5_000, online) > 0.08
    amount = lambda f: f["amount"].median()  # noqa: E731
    assert _mean_over(december, 5_000, amount) > 1.12 * _mean_over(january, 5_000, amount)
    day_to_day = abs(online(generate_day(dt.date(2025, 6, 10), 5_000)) - online(generate_day(dt.date(2025, 6, 11), 5_000)))
    assert day_to_day < 0.03


def test_generate_days_concatenates_an_inclusive_range():
    frame = generate_days(dt.date(2025, 1, 30), dt.date(2025, 2, 2), 200)

    assert len(frame) == 4 * 200
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame["transaction_id"].is_unique
    assert sorted(frame["event_time"].dt.date.unique()) == [dt.date(2025, 1, 30) + dt.timedelta(days=i) for i in range(4)]
    pd.testing.assert_frame_equal(frame.iloc[200:400].reset_index(drop=True), generate_day(dt.date(2025, 1, 31), 200))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: generate_days(dt.date(2025, 1, 2), dt.date(2025, 1, 1), 10), "before start"),
        (lambda: generate_day(dt.date(2025, 1, 2), -1), "rows must be"),
    ],
)
def test_bad_arguments_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_twenty_thousand_rows_generate_well_under_half_a_second():
    generate_day(dt.date(2025, 1, 1), 20_000)  # warms the cached population
    best = min(_timed(lambda: generate_day(dt.date(2025, 1, 2), 20_000)) for _ in range(3))
    assert best < 0.5


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("small, large", [(4_000, 20_000), (1_600, 40_000)])
def test_per_customer_daily_behaviour_does_not_depend_on_volume(small, large):
    """The demo model trains on small days and scores big ones: customer-day features must not shift."""
    day = dt.date(2025, 1, 8)
    per_customer = [generate_day(day, rows).groupby("customer_id").size().mean() for rows in (small, large)]
    assert per_customer[0] == pytest.approx(per_customer[1], rel=0.1)
