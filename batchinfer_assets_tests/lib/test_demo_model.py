"""The demo model trains quickly, deterministically, to a useful AUC, on pre-partition days only."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from batchinfer_assets.domains.card_transactions.features import FEATURE_COLUMNS
from batchinfer_assets.lib.demo_model import FraudMLP, roc_auc, train_demo_model


def test_holdout_auc_and_reference_sample(demo_training):
    assert demo_training.holdout_auc >= 0.85
    assert demo_training.feature_columns == FEATURE_COLUMNS
    assert dt.date.fromisoformat(str(demo_training.params["holdout_end"])) < dt.date(2025, 1, 1)
    reference = demo_training.reference
    assert list(reference.columns) == [*FEATURE_COLUMNS, "score"]
    assert len(reference) == 20_000
    assert reference["score"].between(0, 1).all()
    with torch.inference_mode():
        rescored = demo_training.module(torch.from_numpy(reference[list(FEATURE_COLUMNS)].to_numpy(np.float32, copy=True)))
    np.testing.assert_array_equal(rescored.numpy(), reference["score"].to_numpy())


def test_same_seed_gives_identical_weights():
    # A small configuration: determinism does not depend on size, and two full trainings cost ~10 s.
    kwargs = {"train_days": 6, "holdout_days": 2, "rows_per_day": 800, "epochs": 1}
    first, second = train_demo_model(**kwargs), train_demo_model(**kwargs)
    a, b = first.module.state_dict(), second.module.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    third = train_demo_model(**kwargs, seed=7)
    assert not torch.equal(a["net.0.weight"], third.module.state_dict()["net.0.weight"])


def test_training_refuses_partition_days():
    with pytest.raises(ValueError, match="before 2025-01-01"):
        train_demo_model(train_start=dt.date(2024, 12, 20), train_days=20)


def test_forward_standardises_and_returns_probabilities():
    model = FraudMLP(torch.tensor([10.0, 0.0]), torch.tensor([2.0, 0.0]))
    assert torch.equal(model.std, torch.tensor([2.0, 1.0]))
    out = model(torch.tensor([[10.0, 1.0], [12.0, -3.0], [0.0, 0.0]]))
    assert out.shape == (3,)
    assert bool(((out > 0) & (out < 1)).all())


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
    ],
)
def test_roc_auc_rank_formula(labels, scores, expected):
    assert roc_auc(np.array(labels), np.array(scores)) == pytest.approx(expected)
