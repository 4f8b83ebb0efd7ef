"""The customer churn domain: its declaration, synthetic days and labels, row rules, features and a learnable label."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

import batchinfer_assets
from batchinfer_assets.domain import Domain, load_domain
from batchinfer_assets.domains.customer_churn import domain
from batchinfer_assets.schemas import failure_reasons

REPO_ROOT = Path(batchinfer_assets.__file__).resolve().parent.parent
DAY = dt.date(2025, 3, 8)
SEED = 11
ROW = 3
COUNTS = (
    "tenure_days",
    "sessions_7d",
    "sessions_prev_7d",
    "support_tickets_30d",
    "payment_failures_30d",
    "last_login_days",
)
EXPECTED_LANDING = {
    "customer_day_id": pa.string(),
    "customer_id": pa.string(),
    "plan": pa.string(),
    "tenure_days": pa.int64(),
    "monthly_fee": pa.float64(),
    "sessions_7d": pa.int64(),
    "sessions_prev_7d": pa.int64(),
    "support_tickets_30d": pa.int64(),
    "payment_failures_30d": pa.int64(),
    "last_login_days": pa.int64(),
    "country": pa.string(),
}


def _day(day: dt.date = DAY, rows: int = 200, seed: int = SEED) -> pd.DataFrame:
    return domain.synthetic.generate_day(day, rows, seed)


def _feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    return domain.features(frame)[list(domain.feature_columns)].to_numpy(dtype=np.float64)


def test_the_domain_is_declared_as_the_brief_says_and_loads_by_reference():
    assert load_domain("batchinfer_assets.domains.customer_churn:domain") is domain
    assert isinstance(domain, Domain)
    assert domain.name == "customer_churn"
    assert domain.id_column == "customer_day_id"
    assert domain.label_column == "churned"
    assert domain.event_time_column is None
    assert domain.group_column is None
    assert domain.business_columns == ("customer_id", "plan", "monthly_fee")
    assert domain.rows_name == "customers"
    assert domain.demo_model_uri == "models:/churn-predictor@champion"
    assert domain.landing_columns == EXPECTED_LANDING
    assert domain.vocabularies == {"plan": frozenset({"basic", "standard", "premium"})}
    assert 8 <= len(domain.feature_columns) <= 14
    assert all(description.strip() and "\n" not in description for description in domain.feature_descriptions.values())


@pytest.mark.parametrize("rows", [0, 1, 2_000])
def test_a_generated_day_has_exactly_the_landing_columns_and_types(rows):
    frame = _day(rows=rows)

    assert len(frame) == rows
    inferred = pa.Table.from_pandas(frame, preserve_index=False).schema
    assert inferred.names == list(EXPECTED_LANDING)
    for name, declared in EXPECTED_LANDING.items():
        # pandas' string dtype is written as large_string by pandas 3 and string by pandas 2: the same values.
        found = pa.string() if inferred.field(name).type == pa.large_string() else inferred.field(name).type
        assert found == declared, name
    assert not frame.isna().any().any()


def test_generate_day_is_deterministic_and_its_result_is_the_callers():
    first = _day()
    first.loc[0, "sessions_7d"] = -5  # a caller's edit must not leak into later days through any cache

    again = _day()

    assert again.loc[0, "sessions_7d"] >= 0
    pd.testing.assert_frame_equal(again, _day())
    assert not _day(seed=SEED + 1).equals(again)
    with pytest.raises(ValueError, match="rows must be >= 0"):
        _day(rows=-1)


def _digest_in_a_fresh_process(hash_seed: str) -> str:
    code = (
        "import datetime as dt, hashlib, pandas as pd\n"
        "from batchinfer_assets.domains.customer_churn import domain\n"
        f"s = domain.synthetic\nd = dt.date({DAY.year}, {DAY.month}, {DAY.day})\n"
        f"frames = [s.generate_day(d, 300, {SEED}), s.label_schedule(d, 300, {SEED})]\n"
        "print(hashlib.sha256(b''.join(pd.util.hash_pandas_object(f, index=True).to_numpy().tobytes()"
        " for f in frames)).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_days_and_labels_are_the_same_in_every_process():
    here = hashlib.sha256(
        b"".join(
            pd.util.hash_pandas_object(f, index=True).to_numpy().tobytes()
            for f in (_day(rows=300), domain.synthetic.label_schedule(DAY, 300, SEED))
        )
    ).hexdigest()
    assert _digest_in_a_fresh_process("1") == here


def test_the_same_customers_come_back_every_day_under_a_new_day_id():
    today = _day(rows=500)
    later = _day(DAY + dt.timedelta(days=40), rows=500)

    assert today["customer_id"].is_unique
    assert today["customer_day_id"].is_unique
    assert set(today["customer_id"]) == set(later["customer_id"])
    assert not set(today["customer_day_id"]) & set(later["customer_day_id"])
    assert today["customer_day_id"].str.endswith("-2025-03-08").all()
    both = today.merge(later, on="customer_id", suffixes=("", "_later"))
    # Tenure is a fact about the customer: 40 days later it is 40 days longer (for those signed up by then).
    signed_up = both["tenure_days"] > 0
    assert signed_up.mean() > 0.9
    assert (both.loc[signed_up, "tenure_days_later"] - both.loc[signed_up, "tenure_days"] == 40).all()
    assert set(today["plan"]) <= {"basic", "standard", "premium"}
    assert (today["last_login_days"] <= today["tenure_days"]).all()


def test_the_population_drifts_slowly_over_months():
    start, year_later = _day(dt.date(2025, 1, 1), rows=3_000), _day(dt.date(2026, 1, 1), rows=3_000)

    assert year_later["monthly_fee"].mean() > start["monthly_fee"].mean() * 1.02  # prices rise
    assert year_later["sessions_7d"].mean() < start["sessions_7d"].mean() * 0.97  # usage falls
    assert (year_later["plan"] == "premium").mean() > (start["plan"] == "premium").mean()  # customers upgrade
    next_day = _day(dt.date(2025, 1, 2), rows=3_000)
    assert abs(next_day["monthly_fee"].mean() / start["monthly_fee"].mean() - 1) < 0.01  # but slowly


def test_the_label_schedule_labels_every_row_of_the_day_a_month_later():
    rows = 2_000
    frame = _day(rows=rows)
    schedule = domain.synthetic.label_schedule(DAY, rows, SEED)

    assert list(schedule.columns) == ["customer_day_id", "churned", "labelled_at"]
    assert schedule["customer_day_id"].tolist() == frame["customer_day_id"].tolist()
    assert set(schedule["churned"].unique()) <= {0, 1}
    assert 0.01 < schedule["churned"].mean() < 0.3
    assert isinstance(schedule["labelled_at"].dtype, pd.DatetimeTZDtype)
    assert str(schedule["labelled_at"].dtype.tz) == "UTC"
    known = schedule["labelled_at"].dropna()
    never = 1 - len(known) / rows
    assert 0 < never < 0.1
    day_start = pd.Timestamp(DAY, tz="UTC")
    assert (known >= day_start + pd.Timedelta(days=28)).all()
    assert (known <= day_start + pd.Timedelta(days=domain.synthetic.max_label_delay_days)).all()
    assert domain.synthetic.max_label_delay_days <= 40
    pd.testing.assert_frame_equal(schedule, domain.synthetic.label_schedule(DAY, rows, SEED))
    assert domain.synthetic.label_schedule(DAY, 0, SEED).empty


def test_a_generated_day_passes_the_row_rules():
    frame = _day(rows=2_000)
    domain.row_schema.validate(frame, lazy=True)
    assert failure_reasons(frame, domain.row_schema).isna().all()


def _set(column: str, value, dtype: str | None = None):
    def corrupt(frame: pd.DataFrame) -> None:
        if dtype is not None:
            frame[column] = frame[column].astype(dtype)
        frame.loc[ROW, column] = value

    return corrupt


_ROW_FAULTS = [
    pytest.param(_set("customer_id", None), "customer_id: not_null", id="null customer"),
    pytest.param(_set("customer_id", ""), "customer_id: not_blank", id="empty customer"),
    pytest.param(_set("customer_id", "   "), "customer_id: not_blank", id="blank customer"),
    pytest.param(_set("customer_id", "c1\x00"), "customer_id: no_control_characters", id="NUL in customer"),
    pytest.param(_set("customer_id", "\u00a0\u3000"), "customer_id: not_blank", id="unicode-blank customer"),
    pytest.param(_set("plan", None), "plan: not_null", id="null plan"),
    pytest.param(_set("plan", "Premium"), "plan: str_fullmatch('[a-z][a-z0-9_]*')", id="capitalised plan"),
    pytest.param(_set("plan", "basic\n"), "plan: str_fullmatch('[a-z][a-z0-9_]*')", id="plan with newline"),
    pytest.param(_set("plan", ""), "plan: str_fullmatch('[a-z][a-z0-9_]*')", id="empty plan"),
    pytest.param(_set("monthly_fee", -0.01), "monthly_fee: greater_than_or_equal_to(0)", id="negative fee"),
    pytest.param(_set("monthly_fee", np.inf), "monthly_fee: finite", id="infinite fee"),
    pytest.param(_set("monthly_fee", np.nan), "monthly_fee: not_null", id="null fee"),
    pytest.param(_set("country", "US\n"), "country: str_fullmatch('[A-Z]{2}')", id="country with newline"),
    pytest.param(_set("country", "us"), "country: str_fullmatch('[A-Z]{2}')", id="lower-case country"),
    pytest.param(_set("country", "USA"), "country: str_fullmatch('[A-Z]{2}')", id="three-letter country"),
    pytest.param(_set("country", None), "country: not_null", id="null country"),
    *[
        pytest.param(_set(column, -1), f"{column}: greater_than_or_equal_to(0)", id=f"negative {column}")
        for column in COUNTS
    ],
    pytest.param(_set("sessions_7d", pd.NA, "Int64"), "sessions_7d: not_null", id="null sessions"),
]


@pytest.mark.parametrize(("corrupt", "reason"), _ROW_FAULTS)
def test_one_corrupted_cell_quarantines_its_row_with_the_named_rule(corrupt, reason):
    frame = _day(rows=10)
    corrupt(frame)

    reasons = failure_reasons(frame, domain.row_schema)

    assert reasons[ROW] == reason
    assert reasons.drop(index=ROW).isna().all()


def test_a_plan_outside_the_vocabulary_is_accepted_and_scored_as_other():
    frame = _day(rows=10)
    frame.loc[ROW, "plan"] = "family"

    assert failure_reasons(frame, domain.row_schema).isna().all()
    features = domain.features(frame)
    plans = ["plan_basic", "plan_standard", "plan_premium", "plan_other"]
    assert features.loc[ROW, plans].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert (features.drop(index=ROW)[plans].sum(axis=1) == 1).all()
    assert (features.drop(index=ROW)["plan_other"] == 0).all()
    assert "family" not in domain.vocabularies["plan"]


_COUNT = st.integers(min_value=0, max_value=np.iinfo(np.int64).max)
_ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "customer_id": st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=8).filter(
                lambda s: s.strip() != ""
            ),
            "plan": st.one_of(
                st.sampled_from(["basic", "standard", "premium"]), st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
            ),
            "monthly_fee": st.one_of(st.floats(min_value=0.0, allow_nan=False, allow_infinity=False), st.just(-0.0)),
            **{column: _COUNT for column in COUNTS},
            "country": st.from_regex(r"[A-Z]{2}", fullmatch=True),
        }
    ),
    min_size=0,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(rows=_ROWS, nullable_ints=st.booleans(), object_strings=st.booleans(), shuffled_index=st.booleans())
def test_features_are_finite_float32_one_per_accepted_row_in_input_order(
    rows, nullable_ints, object_strings, shuffled_index
):
    ids = [f"row{i}-{len(rows) - i}" for i in range(len(rows))]
    frame = pd.DataFrame({"customer_day_id": ids, **{c: [r[c] for r in rows] for c in list(EXPECTED_LANDING)[1:]}})
    string_dtype = object if object_strings else "string"
    for column in ("customer_day_id", "customer_id", "plan", "country"):
        frame[column] = frame[column].astype(string_dtype)
    for column in COUNTS:
        frame[column] = frame[column].astype("Int64" if nullable_ints else "int64")
    frame["monthly_fee"] = frame["monthly_fee"].astype("float64")
    if shuffled_index:
        frame.index = pd.Index(np.arange(len(frame))[::-1] * 7 + 3)
    domain.row_schema.validate(frame, lazy=True)  # the strategy draws only rows the rules accept

    features = domain.features(frame)

    assert list(features.columns) == ["customer_day_id", *domain.feature_columns]
    assert features["customer_day_id"].tolist() == ids
    assert features.index.equals(pd.RangeIndex(len(frame)))
    assert pd.api.types.is_string_dtype(features["customer_day_id"].dtype)
    values = features[list(domain.feature_columns)]
    assert (values.dtypes == np.float32).all()
    assert np.isfinite(values.to_numpy()).all()
    pd.testing.assert_frame_equal(domain.features(frame), features)


def _fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardisation and weights of a ridge-regularised logistic regression fitted by Newton's method."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    design = np.column_stack([np.ones(len(x)), (x - mean) / scale])
    weights = np.zeros(design.shape[1])
    for _ in range(25):
        p = 1 / (1 + np.exp(-design @ weights))
        gradient = design.T @ (p - y) + 1e-3 * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + 1e-3 * np.eye(len(weights))
        weights -= np.linalg.solve(hessian, gradient)
    return mean, scale, weights


def _roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    ranks = rankdata(score)
    positives = int(y.sum())
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def test_churn_is_learnable_from_the_features_on_a_later_day():
    source, rows = domain.synthetic, 2_000
    train_days = [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(10)]
    x = np.vstack([_feature_matrix(source.generate_day(d, rows, SEED)) for d in train_days])
    y = np.concatenate([source.label_schedule(d, rows, SEED)["churned"].to_numpy() for d in train_days])
    mean, scale, weights = _fit_logistic(x, y.astype(np.float64))

    test_day = dt.date(2025, 4, 1)
    truth = source.label_schedule(test_day, rows, SEED)["churned"].to_numpy()
    x_test = (_feature_matrix(source.generate_day(test_day, rows, SEED)) - mean) / scale
    score = np.column_stack([np.ones(rows), x_test]) @ weights

    assert 20 < truth.sum() < rows - 20
    assert _roc_auc(truth, score) > 0.65
    assert _roc_auc(truth, np.random.default_rng(0).random(rows)) < 0.6  # the measure itself is not generous
