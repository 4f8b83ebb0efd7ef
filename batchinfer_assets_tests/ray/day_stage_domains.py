"""The built-in domain with feature functions that show where they ran or break on one marked row: importable by the
Ray workers that run them."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd

from batchinfer_assets.domain import load_domain
from batchinfer_assets.domains.card_transactions.features import build_features

# The process the test runs the pipeline step in: the cluster's workers never have this variable.
STEP_PID_VARIABLE = "BATCHINFER_TEST_STEP_PID"
# The amount of the one landed row the broken feature functions trip on.
MARKER_AMOUNT = 1234.5
RAISED = "no history for this customer: the feature store lost it"


def _away_from_step(rows: pd.DataFrame) -> pd.DataFrame:
    if os.environ.get(STEP_PID_VARIABLE) == str(os.getpid()):
        raise RuntimeError("the features were computed in the pipeline step's process")
    return build_features(rows)


def _raising(rows: pd.DataFrame) -> pd.DataFrame:
    if (rows["amount"] == MARKER_AMOUNT).any():
        raise ValueError(f"{RAISED} (in process {os.getpid()})")
    return build_features(rows)


def _infinite(rows: pd.DataFrame) -> pd.DataFrame:
    features = build_features(rows)
    first = next(c for c in features.columns if c != "transaction_id")
    features.loc[(rows["amount"] == MARKER_AMOUNT).to_numpy(), first] = np.float32(np.inf)
    return features


away_from_step = dataclasses.replace(load_domain(None), features=_away_from_step)
raising = dataclasses.replace(load_domain(None), features=_raising)
infinite = dataclasses.replace(load_domain(None), features=_infinite)
