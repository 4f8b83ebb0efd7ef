"""The contract's environment variables, read once into an explicit, immutable settings object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_URI = "models:/fraud-detector@champion"
DEFAULT_ROWS_PER_DAY = 20_000
DEFAULT_MAX_INVALID_FRACTION = 0.01


@dataclass(frozen=True)
class Settings:
    """Where state lives and which model, landing zone and database to use."""

    home: Path
    storage_uri: str
    landing_uri: str | None
    rows_per_day: int
    tracking_uri: str
    model_uri: str
    device: str
    batch_size: int | None
    max_invalid_fraction: float
    predictions_db_url: str
    # botocore reads AWS_ENDPOINT_URL and credentials itself but not AWS_REGION, so the region is passed on.
    aws_region: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
        """Settings from the contract's variables, with the embedded defaults for anything unset."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        home = Path(get("BATCHINFER_HOME") or (cwd or Path.cwd()) / ".batchinfer").absolute()
        batch_size = get("BATCHINFER_BATCH_SIZE")
        return cls(
            home=home,
            storage_uri=get("BATCHINFER_STORAGE_URI") or str(home / "storage"),
            landing_uri=get("BATCHINFER_LANDING_URI"),
            rows_per_day=_positive_int("BATCHINFER_DEMO_ROWS_PER_DAY", get("BATCHINFER_DEMO_ROWS_PER_DAY"))
            or DEFAULT_ROWS_PER_DAY,
            tracking_uri=get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            model_uri=get("BATCHINFER_MODEL_URI") or DEFAULT_MODEL_URI,
            device=get("BATCHINFER_DEVICE") or "auto",
            batch_size=_positive_int("BATCHINFER_BATCH_SIZE", batch_size),
            max_invalid_fraction=_fraction(get("BATCHINFER_MAX_INVALID_FRACTION")),
            predictions_db_url=get("BATCHINFER_PREDICTIONS_DB_URL") or f"sqlite:///{home / 'predictions.db'}",
            aws_region=get("AWS_REGION") or get("AWS_DEFAULT_REGION"),
        )

    @property
    def state_dir(self) -> Path:
        """Small state the scorer keeps between runs (e.g. the batch size that fit after an out-of-memory)."""
        return self.home / "state"

    @property
    def artifact_location(self) -> str:
        """Where the demo experiment's MLflow artifacts go: under home, never a stray ./mlruns."""
        return (self.home / "mlartifacts").as_uri()


def _positive_int(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _fraction(raw: str | None) -> float:
    if raw is None:
        return DEFAULT_MAX_INVALID_FRACTION
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"BATCHINFER_MAX_INVALID_FRACTION must be a number in [0, 1], got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"BATCHINFER_MAX_INVALID_FRACTION must be a number in [0, 1], got {raw!r}")
    return value
