"""The card source's synthetic labels: the landing zone's own truth, released over weeks."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from batchinfer_assets.domains.card_transactions.labels import NEVER_LABELLED_SHARE, synthetic_label_schedule
from batchinfer_assets.domains.card_transactions.synthetic import generate_day

DAY = dt.date(2025, 3, 4)


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
