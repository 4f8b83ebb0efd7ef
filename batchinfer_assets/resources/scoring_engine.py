"""Where a day is scored, and a big day validated and featurized: in the step's own process (`local`) or on a Ray
cluster (`ray`, in `ray_engine` and `ray_day_stages`).

This module imports no Ray: the package, its settings and its retry policy load without the `ray` extra.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional

import dagster as dg

if TYPE_CHECKING:
    import pyarrow as pa

    from batchinfer_assets.lib.model_loading import ResolvedModel
    from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
    from batchinfer_assets.resources.torch_scorer import TorchScorerResource

class RayClusterUnreachableError(ConnectionError):
    """The Ray cluster the address names cannot be reached or joined.

    Classed with the bad-data errors (never retried): a wrong `RAY_ADDRESS`, a missing auth token or a cluster
    that is down fails the same way on the next try, and each try of a Ray connection can take many seconds.
    """


class DayRunner(ABC):
    """Runs the row work of a day too big for one part where the engine computes, and hands the results back in order."""

    @abstractmethod
    def bucket_results(
        self,
        store: PartitionedParquetStore,
        table: str,
        day: str,
        key: str,
        id_column: str,
        count: int,
        compute: Callable[..., Any],
        args: Sequence[Any],
    ) -> Iterator[Any]:
        """`compute(rows, row_numbers, repeated, *args)` of each non-empty bucket of the day split by `key`
        (`spill.bucket_of`), in bucket order, each bucket's rows in the day's order with their numbers in the day;
        `repeated` marks the rows whose (non-null) `id_column` value an earlier row of the day has. What the step's own
        loop over `DayBuckets` computes."""

    @abstractmethod
    def chunk_results(
        self, store: PartitionedParquetStore, table: str, day: str, chunk_rows: int, compute: Callable[..., Any], args: Sequence[Any]
    ) -> Iterator[Any]:
        """`compute(rows, *args)` of each part of up to `chunk_rows` rows of each of the day's files, in order (the
        parts `store.iter_batches` reads)."""


class ScoringEngineResource(dg.ConfigurableResource, ABC):
    """The engine the `predictions` stage hands a day to; the pipeline step asks it to get ready before any day."""

    @property
    @abstractmethod
    def engine(self) -> str:
        """The engine's name, as `BATCHINFER_SCORING_ENGINE` spells it and the materialization records it."""

    def prepare(self, context: Any) -> None:
        """Reach whatever scores the days before the first day is touched, so a bad setting fails the run at once."""

    def day_runner(self, context: Any) -> Optional[DayRunner]:
        """What validates and featurizes a day too big for one part, and validates its snapshot (None: the step itself)."""
        return None


class LocalScoringEngine(ScoringEngineResource):
    """One process, one device: the step streams the day through the model it loaded itself (`score_day`)."""

    @property
    def engine(self) -> str:
        return "local"


class RemoteScoringEngine(ScoringEngineResource):
    """An engine that scores away from the step's process: the step only resolves the model, reads and commits."""

    @abstractmethod
    def score_day(
        self,
        context: Any,
        store: PartitionedParquetStore,
        day: str,
        torch_scorer: TorchScorerResource,
        resolved: ResolvedModel,
        schema: pa.Schema,
        on_rows: Optional[Callable[[int], None]] = None,
    ) -> Any:
        """Score the day's snapshot with the pinned model and replace the day's predictions (`schema`) atomically.

        Returns what the local engine's `DayScored` holds (rows, positives, batch_size, backoffs) plus the
        device, the actor count and the rows per second per actor.
        """
