"""The card source's synthetic labels: when each synthetic transaction's truth becomes known."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from batchinfer_assets.domains.card_transactions.synthetic import LABEL_COLUMN, generate_day

# A share of transactions is never labelled; the others after a log-normal delay with a median of 2.5 days (about
# 80% within a week, 1% after 30 days), capped at 60 days.
NEVER_LABELLED_SHARE = 0.03
MEDIAN_DELAY_DAYS = 2.5
DELAY_SIGMA = 1.1
MAX_DELAY_DAYS = 60.0
_LABELS_STREAM = 0x1ABE15


def synthetic_label_schedule(day: dt.date, rows: int, seed: int) -> pd.DataFrame:
    """Every transaction of the synthetic day with its truth and when that truth becomes known (NaT: never).

    Ids and truth are the synthetic landing zone's own (`generate_day` with the same rows and seed); the delay
    is drawn from its own stream of the same seed and day, so the schedule is the same in every process.
    """
    transactions = generate_day(day, rows, seed=seed)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, day.toordinal(), _LABELS_STREAM])))
    n = len(transactions)
    delay_days = np.minimum(rng.lognormal(np.log(MEDIAN_DELAY_DAYS), DELAY_SIGMA, n), MAX_DELAY_DAYS)
    never = rng.random(n) < NEVER_LABELLED_SHARE
    delay = pd.to_timedelta(np.round(delay_days * 86_400e6).astype(np.int64), unit="us")
    labelled_at = (transactions["event_time"] + delay).astype("datetime64[us, UTC]")
    labelled_at[never] = pd.NaT
    return pd.DataFrame(
        {
            "transaction_id": transactions["transaction_id"],
            "is_fraud": transactions[LABEL_COLUMN].astype(np.int8),
            "labelled_at": labelled_at,
        }
    )
