"""The contract's environment variables, read once into an explicit, immutable settings object."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from batchinfer_assets.domain import BUILT_IN_DOMAIN, DOMAIN_VARIABLE, load_domain
from batchinfer_assets.lib.redaction import redact
from batchinfer_assets.lib.spill import DAY_CHUNK_ROWS_VARIABLE, DEFAULT_DAY_CHUNK_ROWS
from batchinfer_assets.partitions import START_DATE_VARIABLE, start_date

DEFAULT_ROWS_PER_DAY = 20_000
DEFAULT_MAX_INVALID_FRACTION = 0.01
DEFAULT_SNAPSHOT_RETENTION_DAYS = 90
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Settings:
    """Where state lives and which model, landing zone and database to use."""

    home: Path
    storage_uri: str
    landing_uri: str | None
    # Where delayed labels land; None: the synthetic source's own truth, released with a delay.
    labels_uri: str | None
    rows_per_day: int
    tracking_uri: str
    model_uri: str
    device: str
    batch_size: int | None
    max_invalid_fraction: float
    predictions_db_url: str
    snapshot_retention_days: int = DEFAULT_SNAPSHOT_RETENTION_DAYS
    # botocore reads AWS_ENDPOINT_URL and credentials itself but not AWS_REGION, so the region is passed on.
    aws_region: str | None = None
    # `local` (the step's process) or `ray` (Ray Data on the cluster `ray_address` names; unset: a Ray for the run).
    scoring_engine: str = "local"
    ray_address: str | None = None
    # `module.path:attribute` of the domain (what the data is); the built-in card-transactions domain by default.
    domain: str = BUILT_IN_DOMAIN
    # Rows a stage holds in memory at once: a bigger day is split into buckets on local disk.
    day_chunk_rows: int = DEFAULT_DAY_CHUNK_ROWS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
        """Settings from the contract's variables, with the embedded defaults for anything unset."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        home = Path(get("BATCHINFER_HOME") or (cwd or Path.cwd()) / ".batchinfer").absolute()
        batch_size = get("BATCHINFER_BATCH_SIZE")
        domain_reference = get(DOMAIN_VARIABLE) or BUILT_IN_DOMAIN
        domain = load_domain(domain_reference)
        start_date(get(START_DATE_VARIABLE))
        landing_uri = _location("BATCHINFER_LANDING_URI", get("BATCHINFER_LANDING_URI"))
        if landing_uri is None and domain.synthetic is None:
            raise ValueError(
                f"{DOMAIN_VARIABLE}={domain_reference}: domain {domain.name!r} has no synthetic source; "
                "set BATCHINFER_LANDING_URI to its landing zone"
            )
        default_model = domain.demo_model_uri
        model_uri = _model_uri(get("BATCHINFER_MODEL_URI")) or default_model
        if model_uri is None:
            raise ValueError(
                f"domain {domain.name!r} has no demo model: set BATCHINFER_MODEL_URI to the model to score with"
            )
        return cls(
            home=home,
            storage_uri=_location("BATCHINFER_STORAGE_URI", get("BATCHINFER_STORAGE_URI")) or str(home / "storage"),
            landing_uri=landing_uri,
            labels_uri=_location("BATCHINFER_LABELS_URI", get("BATCHINFER_LABELS_URI")),
            rows_per_day=_positive_int("BATCHINFER_DEMO_ROWS_PER_DAY", get("BATCHINFER_DEMO_ROWS_PER_DAY"))
            or DEFAULT_ROWS_PER_DAY,
            tracking_uri=get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            model_uri=model_uri,
            device=_device(get("BATCHINFER_DEVICE")),
            batch_size=_positive_int("BATCHINFER_BATCH_SIZE", batch_size),
            max_invalid_fraction=_fraction(get("BATCHINFER_MAX_INVALID_FRACTION")),
            predictions_db_url=_database_url(get("BATCHINFER_PREDICTIONS_DB_URL")) or f"sqlite:///{home / 'predictions.db'}",
            aws_region=get("AWS_REGION") or get("AWS_DEFAULT_REGION"),
            snapshot_retention_days=_positive_int("BATCHINFER_SNAPSHOT_RETENTION_DAYS", get("BATCHINFER_SNAPSHOT_RETENTION_DAYS"))
            or DEFAULT_SNAPSHOT_RETENTION_DAYS,
            scoring_engine=_scoring_engine(get("BATCHINFER_SCORING_ENGINE")),
            ray_address=get("RAY_ADDRESS"),
            domain=domain_reference,
            day_chunk_rows=_positive_int(DAY_CHUNK_ROWS_VARIABLE, get(DAY_CHUNK_ROWS_VARIABLE)) or DEFAULT_DAY_CHUNK_ROWS,
        )

    @property
    def state_dir(self) -> Path:
        """Small state the scorer keeps between runs (e.g. the batch size that fit after an out-of-memory)."""
        return self.home / "state"

    @property
    def model_cache_dir(self) -> Path:
        """Each pinned model version's artifacts and checksum, downloaded once per machine."""
        return self.home / "model_cache"

    @property
    def artifact_location(self) -> str:
        """Where the demo experiment's MLflow artifacts go: under home, never a stray ./mlruns."""
        return (self.home / "mlartifacts").as_uri()


# Settings that can never work are refused when the code location loads, naming the variable, instead of
# failing (and being retried) inside every run.
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_MODEL_URI = re.compile(r"^(models:/[^/@]+(@[^/@]+|/(\d+|latest))|runs:/[^/]+/.+)/?$")
_DATABASE_BACKENDS = ("sqlite", "postgresql")


def _scoring_engine(raw: str | None) -> str:
    if raw is None:
        return "local"
    if raw.lower() not in ENGINES:
        raise ValueError(
            f"BATCHINFER_SCORING_ENGINE must be one of {', '.join(ENGINES)} (local: one process, one device; ray: Ray Data "
            f"on the cluster RAY_ADDRESS names), got {raw!r}"
        )
    if raw.lower() == "ray" and not all(importlib.util.find_spec(m) for m in ("ray", "dagster_ray")):
        raise ValueError("BATCHINFER_SCORING_ENGINE=ray needs the ray extra: pip install 'batchinfer_assets[ray]'")
    return raw.lower()


_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")


def _location(name: str, raw: str | None) -> str | None:
    """A local path, file:// path or s3://bucket/prefix; anything else (gs://, a typo'd scheme) is refused."""
    if raw is None:
        return None
    if raw.startswith("s3://"):
        if not _S3_URI.match(raw):
            raise ValueError(f"{name}={redact(raw)!r} is not s3://<bucket>/<prefix> with a valid bucket name")
        return raw
    if "://" in raw and not raw.startswith("file://"):
        raise ValueError(f"{name}={redact(raw)!r}: only local paths, file:// and s3://bucket/prefix are supported")
    return raw


def _device(raw: str | None) -> str:
    if raw is None:
        return "auto"
    if not _DEVICE.match(raw.lower()):
        raise ValueError(f"BATCHINFER_DEVICE must be auto, cpu, cuda or cuda:N, got {raw!r}")
    return raw.lower()


def _model_uri(raw: str | None) -> str | None:
    if raw is not None and not _MODEL_URI.match(raw):
        raise ValueError(
            f"BATCHINFER_MODEL_URI must be models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>, got {raw!r}"
        )
    return raw


def _database_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    import sqlalchemy as sa

    try:
        url = sa.make_url(raw)
    except sa.exc.ArgumentError:
        # The value may hold a password: say what is wrong, never echo it.
        raise ValueError(
            "BATCHINFER_PREDICTIONS_DB_URL is not a SQLAlchemy URL (expected e.g. sqlite:///path/predictions.db "
            "or postgresql+psycopg://user:password@host:5432/db)"
        ) from None
    if url.get_backend_name() not in _DATABASE_BACKENDS:
        raise ValueError(
            f"BATCHINFER_PREDICTIONS_DB_URL names backend {url.get_backend_name()!r}; supported: {', '.join(_DATABASE_BACKENDS)}"
        )
    return raw


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
