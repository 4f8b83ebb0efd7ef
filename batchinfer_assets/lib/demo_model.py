"""A domain's demo model: a small standardising MLP trained on pre-2025 synthetic days and registered in MLflow.

It trains on the domain's training set (`batchinfer_assets.training_set`), the rows and features the pipeline
serves, with the labels the domain's synthetic source has released by now.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from batchinfer_assets.domain import DEFAULT_SEED, Domain, load_domain
from batchinfer_assets.lib.model_loading import (
    REFERENCE_ARTIFACT_PATH,
    ensure_experiment,
    log_torch_model,
    make_client,
    mlflow_uris,
)

DEMO_EXPERIMENT = "batchinfer-demo"
DEMO_ALIAS = "champion"
DEFAULT_TRAIN_START = dt.date(2024, 10, 1)
# Partitions start on 2025-01-01: training must end before it so the synthetic slow shift has
# something to drift away from.
TRAINING_CUTOFF = dt.date(2025, 1, 1)
REFERENCE_SAMPLE_ROWS = 20_000


class FraudMLP(torch.nn.Module):
    """Standardise features with training statistics, then a two-hidden-layer MLP; returns P(label = 1), shape (N,)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int = 64) -> None:
        super().__init__()
        n_features = int(mean.shape[0])
        self.register_buffer("mean", mean.detach().clone().to(torch.float32))
        # A constant feature would divide by zero; leaving it unscaled is harmless.
        self.register_buffer("std", torch.where(std > 1e-6, std, torch.ones_like(std)).to(torch.float32))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores, shape (N,)."""
        return self.net((x - self.mean) / self.std).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


@dataclass
class DemoTrainingResult:
    """A trained demo model with its evaluation and a reference sample of its training inputs."""

    module: FraudMLP
    feature_columns: tuple[str, ...]
    holdout_auc: float
    train_rows: int
    holdout_rows: int
    reference: pd.DataFrame
    params: dict[str, object] = field(default_factory=dict)
    training_seconds: float = 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula (ties get average ranks)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _labelled_features(domain: Domain, days: list[dt.date], rows_per_day: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows of the domain's training set over `days` of its synthetic source."""
    import tempfile
    from pathlib import Path

    from batchinfer_assets.resources.labels_zone import SyntheticLabelsResource
    from batchinfer_assets.resources.landing_zone import SyntheticLandingZoneResource
    from batchinfer_assets.training_set import read_training_set, write_training_set

    landing = SyntheticLandingZoneResource(rows_per_day=rows_per_day, seed=seed)
    labels = SyntheticLabelsResource(rows_per_day=rows_per_day, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "training.parquet"
        write_training_set(domain, landing, labels, days[0], days[-1], path)
        return read_training_set(path, domain)


def train_demo_model(
    domain: Domain | None = None,
    *,
    train_start: dt.date = DEFAULT_TRAIN_START,
    train_days: int = 84,
    holdout_days: int = 7,
    rows_per_day: int = 4_000,
    epochs: int = 4,
    batch_size: int = 512,
    learning_rate: float = 2e-3,
    seed: int = DEFAULT_SEED,
) -> DemoTrainingResult:
    """Train the domain's demo MLP on `train_days` synthetic days, holding out the last `holdout_days` for ROC AUC."""
    domain = domain or load_domain(None)
    if domain.synthetic is None:
        raise ValueError(f"domain {domain.name!r} has no synthetic source to train a demo model on")
    feature_columns = domain.feature_columns
    started = time.perf_counter()
    if holdout_days < 1 or train_days <= holdout_days:
        raise ValueError("need train_days > holdout_days >= 1")
    days = [train_start + dt.timedelta(days=i) for i in range(train_days)]
    if days[-1] >= TRAINING_CUTOFF:
        raise ValueError(f"training days must end before {TRAINING_CUTOFF}; got {days[-1]}")
    x_train, y_train = _labelled_features(domain, days[:-holdout_days], rows_per_day, seed)
    x_hold, y_hold = _labelled_features(domain, days[-holdout_days:], rows_per_day, seed)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(x_train)
    y = torch.from_numpy(y_train)
    model = FraudMLP(x.mean(dim=0), x.std(dim=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    # Positives are a few percent of rows; weighting them keeps the gradient from ignoring them.
    pos_weight = torch.tensor(max(1.0, float((1 - y_train.mean()) / max(y_train.mean(), 1e-6))) ** 0.5)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    # One thread: these small batches gain little from more, oversubscribed cores make
    # multi-threaded steps crawl, and the result no longer depends on the machine's core count.
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=generator)
            for start in range(0, x.shape[0], batch_size):
                idx = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model.logits(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    model.eval()

    with torch.inference_mode():
        holdout_scores = model(torch.from_numpy(x_hold)).numpy()
    auc = roc_auc(y_hold, holdout_scores)

    sample_rng = np.random.default_rng(seed)
    take = np.sort(sample_rng.choice(x_train.shape[0], size=min(REFERENCE_SAMPLE_ROWS, x_train.shape[0]), replace=False))
    reference = pd.DataFrame(x_train[take], columns=list(feature_columns))
    with torch.inference_mode():
        reference["score"] = model(torch.from_numpy(x_train[take])).numpy().astype(np.float32)

    params: dict[str, object] = {
        "train_start": train_start.isoformat(),
        "train_end": days[-holdout_days - 1].isoformat(),
        "holdout_start": days[-holdout_days].isoformat(),
        "holdout_end": days[-1].isoformat(),
        "rows_per_day": rows_per_day,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "hidden": 64,
        "seed": seed,
        "domain": domain.name,
        "pos_weight": round(float(pos_weight), 4),
    }
    return DemoTrainingResult(
        module=model,
        feature_columns=tuple(feature_columns),
        holdout_auc=auc,
        train_rows=int(x_train.shape[0]),
        holdout_rows=int(x_hold.shape[0]),
        reference=reference,
        params=params,
        training_seconds=time.perf_counter() - started,
    )


def register_demo_model(
    *,
    tracking_uri: str,
    artifact_location: str | None,
    registry_uri: str | None = None,
    domain: Domain | None = None,
    model_name: str | None = None,
    alias: str = DEMO_ALIAS,
    serialization_format: str = "pt2",
    training: DemoTrainingResult | None = None,
) -> str:
    """Train (unless given a result), log and register the domain's demo model, point `alias` at it; return the version."""
    domain = domain or load_domain(None)
    model_name = model_name or domain.demo_model_name
    if model_name is None:
        raise ValueError(f"domain {domain.name!r} names no demo model (demo_model_name)")
    import tempfile
    from pathlib import Path

    import mlflow

    result = training if training is not None else train_demo_model(domain)
    client = make_client(tracking_uri, registry_uri)
    experiment_id = ensure_experiment(client, DEMO_EXPERIMENT, artifact_location)
    example = result.reference.loc[:, list(result.feature_columns)].to_numpy(dtype=np.float32)[:8]
    with mlflow_uris(tracking_uri, registry_uri):
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"demo-{domain.name}-mlp"):
            mlflow.log_params(result.params)
            mlflow.log_metrics(
                {
                    "holdout_roc_auc": result.holdout_auc,
                    "train_rows": result.train_rows,
                    "holdout_rows": result.holdout_rows,
                    "training_seconds": result.training_seconds,
                }
            )
            info = log_torch_model(
                result.module,
                input_columns=result.feature_columns,
                example=example,
                serialization_format=serialization_format,  # type: ignore[arg-type]
            )
            folder, _, filename = REFERENCE_ARTIFACT_PATH.rpartition("/")
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / filename
                result.reference.to_parquet(local, index=False)
                mlflow.log_artifact(str(local), artifact_path=folder)
        version = mlflow.register_model(info.model_uri, model_name).version
    client.set_registered_model_alias(model_name, alias, str(version))
    client.set_model_version_tag(model_name, str(version), "batchinfer.demo", "true")
    return str(version)
