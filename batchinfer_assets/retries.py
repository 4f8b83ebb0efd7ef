"""Retry transient failures with backoff; never retry a failure caused by the data or the model."""

import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

import dagster as dg
import pandera.errors

from batchinfer_assets.lib.drift import DriftInputError
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.lib.model_loading import ModelResolutionError
from batchinfer_assets.lib.parquet_store import BucketNotFoundError, PartitionNotFoundError
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
    PredictionsRefusedError,
    # Not the data, but as permanent: a wrong address or a missing token fails the same way on every try.
    RayClusterUnreachableError,
)

F = TypeVar("F", bound=Callable)


def _final(exc: BaseException) -> dg.Failure:
    return dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False)


def final_on_bad_data(fn: F) -> F:
    """Turns bad-data errors raised by an asset into failures that `TRANSIENT_RETRY` does not retry."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except BAD_DATA_ERRORS as exc:
                raise _final(exc) from exc

        return generator_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BAD_DATA_ERRORS as exc:
            raise _final(exc) from exc

    return wrapper  # type: ignore[return-value]
