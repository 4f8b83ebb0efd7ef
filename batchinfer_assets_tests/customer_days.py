"""A second domain for tests: one row per customer and day, labelled `churned` weeks later (not the card's names)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

from batchinfer_assets.domain import Domain

# Longer than the card source's 60 days, so what depends on the delay shows which domain it read it from.
MAX_LABEL_DELAY_DAYS = 75.0
NEVER_LABELLED_SHARE = 0.1


class CustomerDaysSource:
    """Deterministic customer-days; each churn label is known 20 to 75 days after its day, a tenth never."""

    max_label_delay_days = MAX_LABEL_DELAY_DAYS

    def generate_day(self, day: dt.date, rows: int, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng([seed, day.toordinal()])
        spend = rng.gamma(2.0, 40.0, rows)
        return pd.DataFrame(
            {
                "customer_day_id": [f"{day:%Y%m%d}-c{i:05d}" for i in range(rows)],
                "customer_id": [f"c{i:05d}" for i in range(rows)],
                "tenure_days": rng.integers(1, 3000, rows).astype(np.float64),
                "spend_30d": spend,
                # The truth the schedule releases: low spenders churn more.
                "churned": rng.random(rows) < 1 / (1 + spend / 20),
            }
        )

    def label_schedule(self, day: dt.date, rows: int, seed: int) -> pd.DataFrame:
        frame = self.generate_day(day, rows, seed)
        rng = np.random.default_rng([seed, day.toordinal(), 7])
        delay = pd.to_timedelta(rng.uniform(20.0, MAX_LABEL_DELAY_DAYS, rows), unit="D")
        # Naive and in nanoseconds, with bool truth: what a domain author's code may well return.
        labelled_at = pd.Series(pd.Timestamp(day) + delay)
        labelled_at[rng.random(rows) < NEVER_LABELLED_SHARE] = pd.NaT
        return pd.DataFrame({"customer_day_id": frame["customer_day_id"], "churned": frame["churned"], "labelled_at": labelled_at})


def _features(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_day_id": rows["customer_day_id"],
            "tenure_years": rows["tenure_days"] / 365.25,
            "log_spend": np.log1p(rows["spend_30d"]),
        }
    )


domain = Domain(
    name="customer_days",
    id_column="customer_day_id",
    landing_columns={
        "customer_day_id": pyarrow.string(),
        "customer_id": pyarrow.string(),
        "tenure_days": pyarrow.float64(),
        "spend_30d": pyarrow.float64(),
    },
    row_schema=pa.DataFrameSchema({"spend_30d": pa.Column(float, checks=pa.Check.ge(0))}, strict=False),
    features=_features,
    feature_descriptions={"tenure_years": "years as a customer", "log_spend": "log(1 + spend of the last 30 days)"},
    group_column="customer_id",
    business_columns=("customer_id",),
    label_column="churned",
    synthetic=CustomerDaysSource(),
    rows_name="customers",
)

# The same data without a synthetic source: it needs real landing and labels zones.
without_source = dataclasses.replace(domain, name="customer_days_zone", synthetic=None)
