"""The built-in domain: card transactions, scored for fraud (the project's default data).

Its synthetic source is `synthetic` (the days) and `labels` (their delayed truth); its features are `features`.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pandera.pandas as pa
import pyarrow

from batchinfer_assets.domain import Domain
from batchinfer_assets.domains.card_transactions import labels, synthetic
from batchinfer_assets.domains.card_transactions.features import (
    CALENDAR_FEATURES,
    FEATURE_DESCRIPTIONS,
    KNOWN_CATEGORIES,
    build_features,
)
from batchinfer_assets.rules import finite, full_match, text_key

LANDING_COLUMNS: dict[str, pyarrow.DataType] = {
    "transaction_id": pyarrow.string(),
    "event_time": pyarrow.timestamp("us", tz="UTC"),
    "customer_id": pyarrow.string(),
    "merchant_category": pyarrow.string(),
    "amount": pyarrow.float64(),
    "currency": pyarrow.string(),
    "channel": pyarrow.string(),
    "country": pyarrow.string(),
}

# The id's and the event time's rules are the pipeline's own (every domain gets them); these are the card's.
ROW_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column(nullable=False, checks=text_key()),
        "merchant_category": pa.Column(nullable=False, checks=text_key()),
        "amount": pa.Column(float, nullable=False, checks=[pa.Check.greater_than_or_equal_to(0), finite()]),
        "currency": pa.Column(nullable=False, checks=full_match("[A-Z]{3}")),
        "channel": pa.Column(nullable=False, checks=pa.Check.isin(list(synthetic.CHANNELS))),
        "country": pa.Column(nullable=False, checks=full_match("[A-Z]{2}")),
    },
    strict=False,
    name="raw_transactions",
)


class CardTransactionsSource:
    """Deterministic synthetic card transactions with planted fraud, and their labels released days later."""

    max_label_delay_days = labels.MAX_DELAY_DAYS

    def generate_day(self, day: dt.date, rows: int, seed: int) -> pd.DataFrame:
        return synthetic.generate_day(day, rows, seed=seed)

    def label_schedule(self, day: dt.date, rows: int, seed: int) -> pd.DataFrame:
        return labels.synthetic_label_schedule(day, rows, seed)


domain = Domain(
    name="card_transactions",
    id_column="transaction_id",
    landing_columns=LANDING_COLUMNS,
    row_schema=ROW_SCHEMA,
    event_time_column="event_time",
    group_column="customer_id",
    features=build_features,
    feature_descriptions=FEATURE_DESCRIPTIONS,
    business_columns=("customer_id", "event_time", "amount", "merchant_category"),
    label_column="is_fraud",
    vocabularies={"merchant_category": KNOWN_CATEGORIES},
    calendar_features=CALENDAR_FEATURES,
    synthetic=CardTransactionsSource(),
    # Prediction databases created before domains hold the merchant category in 64 characters.
    text_lengths={"merchant_category": 64},
    rows_name="transactions",
    demo_model_name="fraud-detector",
)
