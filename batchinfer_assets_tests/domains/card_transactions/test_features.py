"""Feature engineering: shape, dtypes, hand-checked values, robustness and learnability of the planted fraud."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchinfer_assets.domains.card_transactions.features import FEATURE_COLUMNS, FEATURE_DESCRIPTIONS, build_features
from batchinfer_assets.domains.card_transactions.synthetic import LABEL_COLUMN, generate_day
from batchinfer_assets.schemas import feature_schema
from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.resources.prediction_db import published_text_lengths

CARD_LENGTHS = published_text_lengths(CARD)


def _tx(rows: list[tuple]) -> pd.DataFrame:
    """Transactions from (id, iso time, customer, category, amount, currency, channel, country) tuples."""
    frame = pd.DataFrame(
        rows,
        columns=["transaction_id", "event_time", "customer_id", "merchant_category", "amount", "currency", "channel", "country"],
    )
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    return frame.astype({c: "string" for c in ("transaction_id", "customer_id", "merchant_category", "currency", "channel", "country")})


# 2025-03-08 is a Saturday, 2025-03-10 a Monday.
TWO_SAME_DAY = _tx(
    [
        ("a", "2025-03-10T02:00:00Z", "c1", "jewelry", 300.0, "USD", "online", "RU"),
        ("b", "2025-03-10T01:30:00Z", "c1", "grocery", 100.0, "USD", "pos", "US"),
        ("c", "2025-03-08T12:00:00Z", "c2", "cash_withdrawal", 40.0, "EUR", "atm", "DE"),
    ]
)


def test_feature_columns_are_documented_in_a_stable_order():
    assert FEATURE_COLUMNS == tuple(FEATURE_DESCRIPTIONS)
    assert 15 <= len(FEATURE_COLUMNS) <= 25
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    for name, text in FEATURE_DESCRIPTIONS.items():
        assert text.strip() and "\n" not in text, name


@pytest.mark.parametrize(
    ("row", "feature", "expected"),
    [
        (0, "log_amount", np.log1p(300.0)),
        (0, "amount_vs_customer_day_median", np.log1p(300.0) - np.median([np.log1p(300.0), np.log1p(100.0)])),
        (0, "amount_share_of_customer_day", 0.75),
        (1, "amount_share_of_customer_day", 0.25),
        (0, "customer_day_log_txn_count", np.log1p(2)),
        (2, "customer_day_log_txn_count", np.log1p(1)),
        (0, "customer_day_distinct_countries", 2),
        (2, "customer_day_distinct_countries", 1),
        (0, "customer_day_mismatch_share", 0.5),
        (0, "currency_country_mismatch", 1),
        (1, "currency_country_mismatch", 0),
        (2, "currency_country_mismatch", 0),
        (0, "log_minutes_since_prev_txn", np.log1p(30)),
        (1, "log_minutes_since_prev_txn", np.log1p(1440)),
        (1, "log_minutes_to_next_txn", np.log1p(30)),
        (2, "log_minutes_to_next_txn", np.log1p(1440)),
        (0, "hour_sin", np.sin(2 * np.pi * 2 / 24)),
        (2, "hour_cos", np.cos(2 * np.pi * 12 / 24)),
        (0, "is_night", 1),
        (2, "is_night", 0),
        (0, "is_weekend", 0),
        (2, "is_weekend", 1),
        (0, "channel_online", 1),
        (1, "channel_pos", 1),
        (2, "channel_atm", 1),
        (2, "channel_pos", 0),
        (0, "merchant_risk_high", 1),
        (1, "merchant_risk_high", 0),
        (2, "merchant_risk_medium", 1),
        (1, "merchant_category_other", 0),
        (0, "customer_day_night_share", 1.0),
        (0, "customer_day_high_risk_share", 0.5),
    ],
)
def test_hand_checked_feature_values(row, feature, expected):
    features = build_features(TWO_SAME_DAY)
    assert features.loc[row, feature] == pytest.approx(expected, abs=1e-5)


def test_country_off_the_customers_day_mode():
    frame = _tx(
        [
            ("a", "2025-03-10T10:00:00Z", "c1", "grocery", 10.0, "USD", "pos", "US"),
            ("b", "2025-03-10T11:00:00Z", "c1", "grocery", 10.0, "USD", "pos", "US"),
            ("c", "2025-03-10T12:00:00Z", "c1", "electronics", 900.0, "USD", "online", "NG"),
            ("d", "2025-03-11T12:00:00Z", "c1", "electronics", 900.0, "USD", "online", "NG"),
        ]
    )
    features = build_features(frame)
    assert features["country_off_customer_day_mode"].tolist() == [0, 0, 1, 0]
    # The same customer on another day is a separate customer-day.
    assert features.loc[3, "customer_day_log_txn_count"] == pytest.approx(np.log1p(1))


def test_output_has_id_first_float32_finite_features_and_passes_the_feature_schema():
    transactions = generate_day(dt.date(2025, 2, 1), 3_000)
    features = build_features(transactions)

    assert list(features.columns) == ["transaction_id", *FEATURE_COLUMNS]
    assert features["transaction_id"].dtype == pd.StringDtype()
    assert (features.dtypes[list(FEATURE_COLUMNS)] == np.float32).all()
    assert np.isfinite(features[list(FEATURE_COLUMNS)].to_numpy()).all()
    assert isinstance(features.index, pd.RangeIndex)
    assert features["transaction_id"].tolist() == transactions["transaction_id"].tolist()
    feature_schema(FEATURE_COLUMNS, "transaction_id").validate(features)


def test_row_order_follows_the_input_and_values_do_not_depend_on_it():
    transactions = generate_day(dt.date(2025, 2, 2), 2_000)
    shuffled = transactions.sample(frac=1.0, random_state=3)

    features = build_features(shuffled)

    assert features["transaction_id"].tolist() == shuffled["transaction_id"].tolist()
    reordered = features.set_index("transaction_id").loc[transactions["transaction_id"]].reset_index()
    pd.testing.assert_frame_equal(reordered, build_features(transactions), check_exact=False, atol=1e-6)


def test_extra_columns_are_ignored_and_object_strings_accepted():
    transactions = generate_day(dt.date(2025, 2, 3), 500)
    plain = transactions.drop(columns=[LABEL_COLUMN]).astype({"country": object, "channel": object})

    pd.testing.assert_frame_equal(build_features(transactions.assign(extra=1)), build_features(plain))


def test_unknown_category_and_country_map_to_other_encodings():
    frame = _tx(
        [
            ("a", "2025-03-10T10:00:00Z", "c1", "spaceships", 10.0, "USD", "pos", "US"),
            ("b", "2025-03-10T11:00:00Z", "c1", "grocery", 0.0, "XTS", "pos", "ZZ"),
        ]
    )
    features = build_features(frame)

    assert features["merchant_category_other"].tolist() == [1, 0]
    assert features.loc[0, ["merchant_risk_high", "merchant_risk_medium"]].tolist() == [0, 0]
    assert features["currency_country_mismatch"].tolist() == [0, 1]
    assert np.isfinite(features[list(FEATURE_COLUMNS)].to_numpy()).all()


def test_an_empty_day_gives_an_empty_table():
    features = build_features(generate_day(dt.date(2025, 1, 1), 0))
    assert list(features.columns) == ["transaction_id", *FEATURE_COLUMNS]
    assert len(features) == 0


_rows = st.lists(
    st.tuples(
        st.integers(0, 5),  # customer
        st.integers(0, 3 * 86_400 - 1),  # second since 2025-03-09
        st.sampled_from(["grocery", "jewelry", "travel", "cash_withdrawal", "unknown_thing", ""]),
        # The whole domain validation accepts: any finite amount >= 0, subnormals and the float64 maximum included.
        st.one_of(st.just(0.0), st.floats(0, 1e9, allow_nan=False), st.floats(0, allow_nan=False, allow_infinity=False)),
        st.sampled_from(["USD", "EUR", "JPY", "XXX"]),
        st.sampled_from(["pos", "online", "atm"]),
        st.sampled_from(["US", "DE", "JP", "QQ"]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(rows=_rows)
def test_any_valid_transactions_give_finite_float32_features_in_input_order(rows):
    base = pd.Timestamp("2025-03-09", tz="UTC")
    frame = _tx(
        [
            (f"t{i}", (base + pd.Timedelta(seconds=s)).isoformat(), f"c{c}", cat, amt, cur, ch, co)
            for i, (c, s, cat, amt, cur, ch, co) in enumerate(rows)
        ]
    )
    features = build_features(frame)

    assert features["transaction_id"].tolist() == frame["transaction_id"].tolist()
    values = features[list(FEATURE_COLUMNS)].to_numpy()
    assert values.dtype == np.float32
    assert np.isfinite(values).all()
    share = features["amount_share_of_customer_day"].to_numpy()
    assert ((share >= 0) & (share <= 1 + 1e-6)).all()
    # Each customer-day's shares add up to one, whatever the magnitudes.
    day = frame["event_time"].dt.floor("D").astype("int64").to_numpy()
    totals = pd.Series(share.astype(np.float64)).groupby([frame["customer_id"].to_numpy(), day]).sum()
    np.testing.assert_allclose(totals.to_numpy(), 1.0, rtol=1e-5)


def _roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    ranks = pd.Series(scores).rank().to_numpy()
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def test_planted_fraud_is_learnable_from_one_days_features():
    train = [generate_day(dt.date(2025, 1, d), 10_000) for d in range(5, 12)]
    test = [generate_day(dt.date(2025, 2, d), 10_000) for d in (3, 4)]
    x_train = np.vstack([build_features(f)[list(FEATURE_COLUMNS)].to_numpy(np.float64) for f in train])
    y_train = np.concatenate([f[LABEL_COLUMN].to_numpy() for f in train])
    x_test = np.vstack([build_features(f)[list(FEATURE_COLUMNS)].to_numpy(np.float64) for f in test])
    y_test = np.concatenate([f[LABEL_COLUMN].to_numpy() for f in test])
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    # Plain logistic regression by full-batch gradient descent: if a linear model learns it, an MLP will.
    weights, bias = np.zeros(x_train.shape[1]), 0.0
    for _ in range(300):
        p = 1 / (1 + np.exp(-(x_train @ weights + bias)))
        weights -= 0.5 * (x_train.T @ (p - y_train) / len(y_train) + 1e-4 * weights)
        bias -= 0.5 * float(np.mean(p - y_train))
    auc = _roc_auc(y_test, x_test @ weights + bias)

    assert auc >= 0.85
    # Not trivial either: a single obvious feature is clearly worse than the model.
    assert _roc_auc(y_test, x_test[:, FEATURE_COLUMNS.index("is_night")]) < auc - 0.1


@pytest.mark.parametrize("rows", [20_000])
def test_features_for_a_day_take_well_under_half_a_second(rows):
    transactions = generate_day(dt.date(2025, 1, 1), rows)
    build_features(transactions)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        build_features(transactions)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.5


def test_amounts_near_the_float64_maximum_keep_their_shares():
    base = pd.Timestamp("2025-03-09 10:00", tz="UTC").isoformat()
    frame = _tx([("t0", base, "c1", "grocery", 1e308, "USD", "pos", "US"), ("t1", base, "c1", "grocery", 1e308, "USD", "pos", "US")])
    assert build_features(frame)["amount_share_of_customer_day"].tolist() == [0.5, 0.5]
