"""Retry transient failures with backoff; every other failure fails once, at once.

A step is retried only when its error is known to clear up with time (a dropped connection, a timeout, a
throttled or briefly unavailable service). Bad data, a bad model, a setting that can never work and a bug in
code fail the same way on every try, so retrying them only delays the failure (three tries with backoff
added minutes to each before this classification).
"""

import errno
import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

import dagster as dg
import pandera.errors

from batchinfer_assets.lib.drift import DriftInputError
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.lib.model_loading import ModelResolutionError
from batchinfer_assets.lib.parquet_store import BucketNotFoundError, PartitionNotFoundError, StorageCredentialsError
from batchinfer_assets.lib.ray_pool import RayNoProgressError, RayPoolDoesNotFitError
from batchinfer_assets.lib.redaction import redact, redacted_error
from batchinfer_assets.lib.snapshot_archive import SnapshotNotArchivedError
from batchinfer_assets.resources.prediction_db import PredictionsRefusedError
from batchinfer_assets.resources.scoring_engine import RayClusterUnreachableError
from batchinfer_assets.resources.torch_scorer import MissingInputColumnsError, ModelOutputError
from batchinfer_assets.schemas import ColumnLevelSchemaError

# A network blip, a throttled object store or a database failover clears up within a minute or two:
# three tries after about 5 s, 10 s and 20 s (each +/- jitter so parallel steps do not retry in step).
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

# Failures that would fail the same way on every try: the input or the model is wrong, not the moment.
BAD_DATA_ERRORS: tuple[type[BaseException], ...] = (
    LandingDataError,
    DriftInputError,
    ColumnLevelSchemaError,
    pandera.errors.SchemaError,
    pandera.errors.SchemaErrors,
    MissingInputColumnsError,
    ModelOutputError,
    ModelResolutionError,
    PartitionNotFoundError,
    BucketNotFoundError,
    StorageCredentialsError,
    PredictionsRefusedError,
    SnapshotNotArchivedError,
    # Not the data, but as permanent: a wrong address or a missing token fails the same way on every try.
    RayClusterUnreachableError,
    # A pool the cluster cannot hold, or a job that waited the whole no-progress timeout: a retry waits again.
    RayPoolDoesNotFitError,
    RayNoProgressError,
)

F = TypeVar("F", bound=Callable)


class TransientStepError(Exception):
    """A failure that may clear up with time, its message masked: what the retry policy retries and Dagster logs."""

# Error codes of AWS-style services and of MLflow's REST API that say "try again later".
_TRANSIENT_CODES = frozenset(
    {
        "Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError",
        "ServiceUnavailable", "503", "500", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
    }
)
# A full disk, an exceeded quota or a read-only file system stays so until someone frees space or remounts: one
# failure, at once, with the device's own message (its path, or the database it came from). Databases say it in words.
_STORAGE_EXHAUSTED_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_STORAGE_EXHAUSTED_MESSAGES = (
    "no space left on device", "disk quota exceeded", "read-only file system", "database or disk is full",
    "attempt to write a readonly database", "file too large",
)
# Connection-level database failures that never clear on their own (the others: a restart, a failover).
_PERMANENT_DATABASE_MESSAGES = ("password authentication failed", "does not exist", "no such table", "permission denied")


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a failure that a later try may not meet."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BAD_DATA_ERRORS) or _is_storage_exhausted(current):
            return False  # classified already, whatever it was raised from
        if _is_transient_one(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_storage_exhausted(error: BaseException) -> bool:
    """Whether `error` says a disk or database is full, over quota or read-only (never transient)."""
    if isinstance(error, OSError) and error.errno in _STORAGE_EXHAUSTED_ERRNOS:
        return True
    message = str(error).lower()
    return any(m in message for m in _STORAGE_EXHAUSTED_MESSAGES)


def _is_transient_one(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError, TransientStepError)):
        return True
    module = type(error).__module__.split(".")[0]
    name = type(error).__name__
    if module in ("botocore", "urllib3", "requests"):
        if name in ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                    "ConnectionError", "ProtocolError", "NewConnectionError", "MaxRetryError", "Timeout"):
            return True
        code = str(getattr(error, "response", {}).get("Error", {}).get("Code", "")) if name == "ClientError" else ""
        return code in _TRANSIENT_CODES
    if module in ("sqlalchemy", "psycopg", "psycopg2", "sqlite3"):
        if name in ("OperationalError", "DisconnectionError", "InterfaceError", "TimeoutError"):
            message = str(error).lower()
            return not any(m in message for m in _PERMANENT_DATABASE_MESSAGES)
        return False
    if module == "mlflow":
        # Not INTERNAL_ERROR: it is MLflow's code for any error raised without one (its HTTP client already
        # retries 5xx answers itself, a bounded number of times).
        return str(getattr(error, "error_code", "")) in _TRANSIENT_CODES
    return False


def step_failure(error: BaseException, where: str = "") -> Exception:
    """What a step raises for `error`, credentials masked: a `TransientStepError` when it may clear up, else a final failure.

    Raise it `from redacted_error(error)`: Dagster shows the cause chain too.
    """
    description = redact(f"{where}{type(error).__name__}: {error}")
    return TransientStepError(description) if is_transient(error) else dg.Failure(description=description, allow_retries=False)


def masked_failures(fn: F) -> F:
    """Turns any error an op or asset raises into `step_failure(error)`: one that names it, credentials masked."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except dg.Failure:
            raise
        except Exception as error:
            raise step_failure(error) from redacted_error(error)

    return wrapper  # type: ignore[return-value]


def final_on_bad_data(fn: F) -> F:
    """Turns bad-data errors raised by an asset into failures that `TRANSIENT_RETRY` does not retry."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except BAD_DATA_ERRORS as exc:
                raise step_failure(exc) from redacted_error(exc)

        return generator_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BAD_DATA_ERRORS as exc:
            raise step_failure(exc) from redacted_error(exc)

    return wrapper  # type: ignore[return-value]
