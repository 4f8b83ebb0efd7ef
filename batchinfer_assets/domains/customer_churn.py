"""Daily customer churn: one row per customer per day, labelled about a month later with whether they left."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

from batchinfer_assets.domain import Domain
from batchinfer_assets.rules import finite, full_match, text_key

ID_COLUMN = "customer_day_id"
LABEL_COLUMN = "churned"
PLANS = ("basic", "standard", "premium")

LANDING_COLUMNS: dict[str, pyarrow.DataType] = {
    ID_COLUMN: pyarrow.string(),
    "customer_id": pyarrow.string(),
    "plan": pyarrow.string(),
    "tenure_days": pyarrow.int64(),
    "monthly_fee": pyarrow.float64(),
    "sessions_7d": pyarrow.int64(),
    "sessions_prev_7d": pyarrow.int64(),
    "support_tickets_30d": pyarrow.int64(),
    "payment_failures_30d": pyarrow.int64(),
    "last_login_days": pyarrow.int64(),
    "country": pyarrow.string(),
}
COUNT_COLUMNS = (
    "tenure_days",
    "sessions_7d",
    "sessions_prev_7d",
    "support_tickets_30d",
    "payment_failures_30d",
    "last_login_days",
)


ROW_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column(nullable=False, checks=text_key()),
        # A plan outside PLANS is accepted (scored as plan_other, counted by the vocabulary warning): a newly
        # launched plan must not quarantine its customers. A malformed value is not a plan name at all.
        "plan": pa.Column(nullable=False, checks=full_match(r"[a-z][a-z0-9_]*")),
        "monthly_fee": pa.Column(nullable=False, checks=[pa.Check.greater_than_or_equal_to(0), finite()]),
        **{c: pa.Column(nullable=False, checks=pa.Check.greater_than_or_equal_to(0)) for c in COUNT_COLUMNS},
        "country": pa.Column(nullable=False, checks=full_match(r"[A-Z]{2}")),
    },
    strict=False,
    name="customer_days",
)

FEATURE_DESCRIPTIONS: dict[str, str] = {
    "log_tenure_days": "log1p of the days since the customer signed up",
    "log_monthly_fee": "log1p of the monthly fee the customer pays",
    "log_sessions_7d": "log1p of the customer's sessions in the last 7 days",
    "session_trend": "log1p(sessions last 7 days) minus log1p(sessions the 7 days before): negative when usage falls",
    "log_support_tickets_30d": "log1p of the support tickets the customer opened in the last 30 days",
    "log_payment_failures_30d": "log1p of the customer's failed payments in the last 30 days",
    "log_last_login_days": "log1p of the days since the customer last logged in",
    "plan_basic": "1 on the basic plan",
    "plan_standard": "1 on the standard plan",
    "plan_premium": "1 on the premium plan",
    "plan_other": "1 on a plan outside basic, standard and premium",
}


def _counts(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A count column as float64, whether it arrives as int64 or nullable Int64."""
    return frame[column].to_numpy(dtype=np.float64)


def build_features(frame: pd.DataFrame) -> pd.DataFrame:
    """`customer_day_id` plus the FEATURE_DESCRIPTIONS columns as float32, one row per input row in input order."""
    plan = frame["plan"].astype("string")
    log_sessions = np.log1p(_counts(frame, "sessions_7d"))
    features = {
        "log_tenure_days": np.log1p(_counts(frame, "tenure_days")),
        "log_monthly_fee": np.log1p(frame["monthly_fee"].to_numpy(dtype=np.float64)),
        "log_sessions_7d": log_sessions,
        "session_trend": log_sessions - np.log1p(_counts(frame, "sessions_prev_7d")),
        "log_support_tickets_30d": np.log1p(_counts(frame, "support_tickets_30d")),
        "log_payment_failures_30d": np.log1p(_counts(frame, "payment_failures_30d")),
        "log_last_login_days": np.log1p(_counts(frame, "last_login_days")),
        **{f"plan_{name}": (plan == name).to_numpy(dtype=np.float64, na_value=0.0) for name in PLANS},
        "plan_other": (~plan.isin(PLANS)).to_numpy(dtype=np.float64, na_value=1.0),
    }
    columns = {ID_COLUMN: pd.array(frame[ID_COLUMN], dtype="string")}
    columns.update({name: np.asarray(features[name], dtype=np.float32) for name in FEATURE_DESCRIPTIONS})
    return pd.DataFrame(columns, index=pd.RangeIndex(len(frame)))


# The synthetic source: a fixed population whose usage rises and falls over weeks; falling usage, support
# trouble, failed payments, short tenure and the basic plan raise the chance of leaving in the next 30 days.
SHIFT_EPOCH = dt.date(2025, 1, 1)
_POPULATION_STREAM = 0xC0_57_0E
_DAY_STREAM = 0xC0_DA_7A
_LABELS_STREAM = 0xC0_1A_BE
_LIST_PRICES = np.array([9.99, 15.99, 22.99])
_HOME_COUNTRIES = ("US", "GB", "DE", "FR", "CA", "ES", "IT", "NL", "BR", "IN")
_HOME_COUNTRY_PROBS = np.array([0.40, 0.12, 0.10, 0.08, 0.07, 0.06, 0.05, 0.04, 0.04, 0.04])
_PLAN_EFFECT = np.array([0.35, 0.0, -0.25])
# Labels arrive 28 to 35 days after the day; a few customers are never labelled (closed accounts, lost records).
LABEL_DELAY_DAYS = (28.0, 35.0)
NEVER_LABELLED_SHARE = 0.02


@dataclass(frozen=True)
class _Population:
    """Fixed customers and their habits, independent of the day."""

    customer_ids: np.ndarray
    signup_ordinal: np.ndarray
    country: np.ndarray
    plan_draw: np.ndarray
    discount: np.ndarray
    usage_rate: np.ndarray
    usage_amplitude: np.ndarray
    usage_period: np.ndarray
    usage_phase: np.ndarray
    ticket_rate: np.ndarray
    failure_rate: np.ndarray


@functools.lru_cache(maxsize=8)
def _population(seed: int, size: int) -> _Population:
    """The customers of a seed and size; independent of the day so that customers and habits persist."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _POPULATION_STREAM, size])))
    population = _Population(
        customer_ids=np.array([f"c{i:07d}" for i in range(size)], dtype=object),
        signup_ordinal=SHIFT_EPOCH.toordinal()
        - np.minimum(rng.lognormal(np.log(400.0), 1.0, size), 5000).astype(np.int64),
        country=rng.choice(len(_HOME_COUNTRIES), size=size, p=_HOME_COUNTRY_PROBS),
        plan_draw=rng.random(size),
        discount=rng.choice([1.0, 0.8, 0.5, 0.0], size=size, p=[0.80, 0.12, 0.06, 0.02]),
        usage_rate=rng.gamma(2.0, 1.5, size),
        usage_amplitude=rng.uniform(0.0, 1.3, size),
        usage_period=rng.uniform(45.0, 180.0, size),
        usage_phase=rng.uniform(0.0, 2 * np.pi, size),
        ticket_rate=rng.gamma(0.6, 0.25, size),
        failure_rate=rng.gamma(0.3, 0.3, size),
    )
    for value in vars(population).values():
        value.flags.writeable = False  # shared by every day of the cache
    return population


def _months_since_epoch(day: dt.date) -> float:
    # Bounded so that days far from the epoch stay plausible rather than extrapolating the trend forever.
    return float(np.clip((day - SHIFT_EPOCH).days / 30.4375, -36.0, 60.0))


def _usage(pop: _Population, ordinal: int) -> np.ndarray:
    """Expected sessions a day of every customer on the day with this ordinal (usage slowly declines)."""
    months = _months_since_epoch(dt.date.fromordinal(ordinal))
    wave = pop.usage_amplitude * np.sin(2 * np.pi * ordinal / pop.usage_period + pop.usage_phase)
    return pop.usage_rate * np.exp(wave) * 0.99**months


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _simulate_day(day: dt.date, rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The day's landing rows (one per customer of a population of `rows`) and whether each churns (int8)."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    pop = _population(seed, rows)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, day.toordinal(), _DAY_STREAM])))
    ordinal = day.toordinal()
    months = _months_since_epoch(day)

    tenure = np.maximum(0, ordinal - pop.signup_ordinal)
    # Customers slowly move up the plans: the thresholds on each customer's fixed draw fall over the months.
    shift = 0.004 * months
    plan = np.where(pop.plan_draw < 0.45 - shift, 0, np.where(pop.plan_draw < 0.80 - shift, 1, 2))
    fee = np.round(_LIST_PRICES[plan] * pop.discount * 1.004**months, 2)

    usage_now = _usage(pop, ordinal)
    usage_before = _usage(pop, ordinal - 7)
    sessions = rng.poisson(7 * usage_now)
    sessions_prev = rng.poisson(7 * usage_before)
    failures = rng.poisson(pop.failure_rate)
    tickets = rng.poisson(pop.ticket_rate * (1 + 1.5 * failures))
    # Active customers logged in within the week; idle ones some days before it, sooner the more they usually use.
    recent = np.floor(rng.exponential(7.0 / (sessions + 1)))
    idle = 7 + np.floor(rng.exponential(1.0 / np.maximum(usage_now, 0.02)))
    last_login = np.minimum(np.where(sessions > 0, np.minimum(recent, 6), np.minimum(idle, 365)), tenure)

    logit = (
        -0.8
        + 0.01 * months
        - 3.0 * np.log(usage_now / usage_before)
        - 0.5 * np.log1p(7 * usage_now)
        + 0.6 * tickets
        + 0.9 * np.minimum(failures, 3)
        - 0.35 * np.log1p(tenure / 30.0)
        + _PLAN_EFFECT[plan]
        + 0.02 * np.minimum(last_login, 60)
    )
    churned = (rng.random(rows) < _sigmoid(logit)).astype(np.int8)

    customer_ids = pd.array(pop.customer_ids, dtype="string")
    frame = pd.DataFrame(
        {
            ID_COLUMN: customer_ids + f"-{day:%Y-%m-%d}",
            "customer_id": customer_ids,
            "plan": pd.array(np.asarray(PLANS, dtype=object)[plan], dtype="string"),
            "tenure_days": tenure.astype(np.int64),
            "monthly_fee": fee.astype(np.float64),
            "sessions_7d": sessions.astype(np.int64),
            "sessions_prev_7d": sessions_prev.astype(np.int64),
            "support_tickets_30d": tickets.astype(np.int64),
            "payment_failures_30d": failures.astype(np.int64),
            "last_login_days": last_login.astype(np.int64),
            "country": pd.array(np.asarray(_HOME_COUNTRIES, dtype=object)[pop.country], dtype="string"),
        }
    )
    return frame, churned


class ChurnSyntheticSource:
    """Deterministic synthetic customer days and their churn labels, released 28 to 35 days later."""

    max_label_delay_days = LABEL_DELAY_DAYS[1]

    def generate_day(self, day: dt.date, rows: int, seed: int) -> pd.DataFrame:
        """One row per customer of a stable population of `rows` customers: the same frame for the same arguments."""
        return _simulate_day(day, rows, seed)[0]

    def label_schedule(self, day: dt.date, rows: int, seed: int) -> pd.DataFrame:
        """Every row of `generate_day(day, rows, seed)` with whether it churned and when that is known (NaT: never)."""
        frame, churned = _simulate_day(day, rows, seed)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, day.toordinal(), _LABELS_STREAM])))
        delay_micros = np.round(rng.uniform(*LABEL_DELAY_DAYS, rows) * 86_400e6).astype(np.int64)
        labelled_at = pd.Series(
            np.datetime64(day, "us") + delay_micros.astype("timedelta64[us]"), dtype="datetime64[us]"
        ).dt.tz_localize("UTC")
        labelled_at[rng.random(rows) < NEVER_LABELLED_SHARE] = pd.NaT
        return pd.DataFrame({ID_COLUMN: frame[ID_COLUMN], LABEL_COLUMN: churned, "labelled_at": labelled_at})


domain = Domain(
    name="customer_churn",
    id_column=ID_COLUMN,
    landing_columns=LANDING_COLUMNS,
    row_schema=ROW_SCHEMA,
    features=build_features,
    feature_descriptions=FEATURE_DESCRIPTIONS,
    event_time_column=None,
    group_column=None,
    business_columns=("customer_id", "plan", "monthly_fee"),
    label_column=LABEL_COLUMN,
    vocabularies={"plan": frozenset(PLANS)},
    synthetic=ChurnSyntheticSource(),
    rows_name="customers",
    demo_model_name="churn-predictor",
)
