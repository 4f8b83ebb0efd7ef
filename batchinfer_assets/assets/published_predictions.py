"""Predictions published to the database downstream apps query."""

from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchinfer_assets.assets._run import DayState, PipelineRun
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.lib.redaction import redact
from batchinfer_assets.lib.spill import DayBuckets, bucket_count, bucket_of
from batchinfer_assets.resources.prediction_db import PREDICTIONS_TABLE
from batchinfer_assets.tables import (
    PREDICTIONS,
    PUBLISHED_PREDICTIONS,
    RAW_TRANSACTIONS,
    SCORING_MODEL,
)

# Beside the domain's id column and business columns (what an app needs to act on a score without a join back).
SCORE_COLUMNS = ("score", "label", "model_name", "model_version")

PUBLISHED_PREDICTIONS_SPEC = dg.AssetSpec(
    PUBLISHED_PREDICTIONS,
    # The model too: the served rows carry the scores of one version, stale once the URI resolves to another.
    deps=[PREDICTIONS, RAW_TRANSACTIONS, SCORING_MODEL],
    description=(
        "The day's predictions with their business columns in the prediction database, replacing that day's "
        "rows in one transaction."
    ),
    kinds={"sqlalchemy"},
)


def publish_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization]:
    """Replace the day's rows in the prediction database with its predictions and business columns."""
    scored = run.recorded_metadata(PREDICTIONS, state)
    lineage = scoring_run(scored, run.recorded_run_id(PREDICTIONS, state))
    if lineage is None:
        run.context.log.warning(
            f"{state.day}: predictions have no recorded scoring lineage (written outside this Dagster instance?); "
            "rows are published without a scoring_runs link"
        )
    chunks: list[int] = []
    try:
        with closing(publishable_rows(run, state)) as rows:  # closing removes a big day's buckets, even on failure
            written = run.prediction_db.replace_partition(state.day, _counted(rows, chunks), lineage, domain=run.domain)
    except OutOfRawOrder:
        # Predictions written before the pipeline kept a big day in the order of its rows (or outside it): the
        # transaction was rolled back, and the day is joined again through buckets of ids.
        run.context.log.info(f"{state.day}: predictions not in the order of the day's raw rows: joined through buckets of ids")
        chunks.clear()
        with closing(publishable_rows(run, state, in_raw_order=False)) as rows:
            written = run.prediction_db.replace_partition(state.day, _counted(rows, chunks), lineage, domain=run.domain)
    run.prediction_db.release_connections()
    run.context.log.info(
        f"{state.day}: published {written:,} rows in {len(chunks)} chunk(s) to {redact(run.prediction_db.url)}"
    )
    yield run.materialization(
        PUBLISHED_PREDICTIONS,
        state,
        {"table": PREDICTIONS_TABLE, "database": redact(run.prediction_db.url), "row_count": written, "chunks": len(chunks)},
        inputs=(PREDICTIONS, RAW_TRANSACTIONS, SCORING_MODEL),
        model_version=scored.get("model_version"),
    )


def _counted(chunks: Iterator[pa.Table], sizes: list[int]) -> Iterator[pa.Table]:
    """`chunks` as they are, each one's row count appended to `sizes` on the way."""
    for chunk in chunks:
        sizes.append(chunk.num_rows)
        yield chunk


def scoring_run(scored: Mapping[str, Any], dagster_run_id: str | None) -> dict[str, Any] | None:
    """The `scoring_runs` row of the scoring behind the day's predictions, from their recorded metadata."""
    if not dagster_run_id or "model_artifact_checksum" not in scored or "input_snapshot_hash" not in scored:
        return None
    lineage = {
        "dagster_run_id": dagster_run_id,
        "model_uri": scored["model_uri"],
        "pinned_model_uri": scored["pinned_model_uri"],
        "model_name": scored.get("model_name") or None,
        "model_version": scored["model_version"],
        "model_run_id": scored.get("model_run_id") or None,
        "tracking_uri": scored.get("model_tracking_uri"),
        "artifact_checksum": scored["model_artifact_checksum"],
        "input_snapshot_hash": scored["input_snapshot_hash"],
        "code_version": scored.get("code_version"),
        "engine": scored.get("engine", "local"),
        "device": scored.get("device"),
        "batch_size": scored.get("batch_size"),
        "precision": scored.get("precision"),
        "threshold": scored.get("threshold"),
    }
    return lineage


def publishable_rows(run: PipelineRun, state: DayState, in_raw_order: bool = True) -> Iterator[pa.Table]:
    """The day's predictions joined by the domain's id column with the raw rows' business columns, in chunks.

    A day of at most `run.day_chunk_rows` predictions is one chunk. A bigger one is read in pieces beside its raw rows
    (`joined_in_raw_order`: predictions follow the order of the day's rows), or, with `in_raw_order` False, split by
    id into buckets on local disk (predictions and raw rows alike, so each id's rows meet in one bucket) and joined
    bucket by bucket.
    """
    id_column, business_columns = run.domain.id_column, list(run.domain.business_columns)
    predicted = [id_column, *SCORE_COLUMNS]
    rows = run.recorded_metadata(PREDICTIONS, state).get("row_count")
    if not isinstance(rows, int):  # written outside this instance: the files' footers say
        rows = run.store.row_count(PREDICTIONS, state.day)
    if rows <= run.day_chunk_rows:
        predictions = run.store.read_partition(PREDICTIONS, state.day, columns=predicted)
        if state.raw is not None:
            raw = pa.Table.from_pandas(state.raw.loc[:, [id_column, *business_columns]], preserve_index=False)
        else:
            raw = run.store.read_partition(RAW_TRANSACTIONS, state.day, columns=[id_column, *business_columns])
        yield joined_rows(predictions, raw, id_column)
        return
    # A big day's raw rows are read back from storage batch by batch (the run never holds them whole).
    stored = run.store.schema(PREDICTIONS, state.day)
    predictions_schema = pa.schema([stored.field(name).remove_metadata() for name in predicted])
    stored = run.store.schema(RAW_TRANSACTIONS, state.day)
    raw_schema = pa.schema(
        [predictions_schema.field(id_column), *(stored.field(name).remove_metadata() for name in business_columns)]
    )
    sides = (
        run.store.iter_batches(PREDICTIONS, state.day, run.day_chunk_rows, columns=predicted),
        predictions_schema,
        run.store.iter_batches(RAW_TRANSACTIONS, state.day, run.day_chunk_rows, columns=raw_schema.names),
        raw_schema,
        id_column,
    )
    if in_raw_order:
        yield from joined_in_raw_order(*sides, _RAW_ORDER_WINDOW * run.day_chunk_rows)
    else:
        yield from joined_by_bucket(*sides, bucket_count(rows, run.day_chunk_rows), run.spill_dir)


class OutOfRawOrder(Exception):
    """A day's predictions do not follow the order of its raw rows, so they cannot be joined as both are read."""


# Raw rows a piece of predictions may skip (quarantined rows between its valid ones), in day_chunk_rows.
_RAW_ORDER_WINDOW = 3


def joined_in_raw_order(
    predictions: Iterable[pa.RecordBatch | pa.Table],
    predictions_schema: pa.Schema,
    raw: Iterable[pa.RecordBatch | pa.Table],
    raw_schema: pa.Schema,
    id_column: str,
    skipped_rows: int,
) -> Iterator[pa.Table]:
    """`joined_rows` of each piece of `predictions`, the raw rows read alongside (memory: a piece and its window).

    The pipeline writes a day's predictions in the order of its valid raw rows, so a piece's ids are found, in rising
    order, among the raw rows after the previous piece's last one. Raises OutOfRawOrder, before that piece is
    yielded, when they are not (found, rising, within the piece's rows plus `skipped_rows` more raw rows).
    """
    raw = iter(raw)
    window = raw_schema.empty_table()
    for piece in predictions:
        piece = _as_table(piece, predictions_schema)
        ids = piece.column(id_column)
        while True:
            positions = pc.index_in(ids, value_set=window.column(id_column))
            if positions.null_count == 0:
                break
            batch = next(raw, None) if window.num_rows <= piece.num_rows + skipped_rows else None
            if batch is None:
                raise OutOfRawOrder(f"{positions.null_count:,} of {len(ids):,} ids not found in raw order")
            window = pa.concat_tables([window, _as_table(batch, raw_schema)])
        found = positions.to_numpy()
        if len(found) and (np.diff(found) <= 0).any():
            raise OutOfRawOrder("ids found out of raw order")
        business = window.drop_columns([id_column]).take(positions)
        yield pa.Table.from_arrays([*piece.columns, *business.columns], names=[*piece.column_names, *business.column_names])
        if len(found):
            window = window.slice(int(found[-1]) + 1)


def _as_table(batch: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    return table.select(schema.names).cast(schema)


def joined_by_bucket(
    predictions: Iterable[pa.RecordBatch | pa.Table],
    predictions_schema: pa.Schema,
    raw: Iterable[pa.RecordBatch | pa.Table],
    raw_schema: pa.Schema,
    id_column: str,
    count: int,
    spill_dir: str | None = None,
) -> Iterator[pa.Table]:
    """`joined_rows` of each of `count` buckets of the ids, the predictions and raw rows spilled to disk by bucket first.

    Both schemas hold the id column in one type (an id hashes to one bucket on both sides); the raw schema holds the
    business columns besides it.
    """
    with DayBuckets(count, predictions_schema, spill_dir) as predicted, DayBuckets(count, raw_schema, spill_dir) as landed:
        for buckets, schema, batches in ((predicted, predictions_schema, predictions), (landed, raw_schema, raw)):
            for batch in batches:
                table = _as_table(batch, schema)
                buckets.add(table, bucket_of(table.column(id_column), count))
        # Buckets come back in order, empty ones skipped: a bucket's raw rows may have no predictions (all quarantined).
        predicted_buckets, landed_buckets = iter(predicted), iter(landed)
        for predicted_rows, landed_rows in zip(predicted.rows, landed.rows, strict=True):
            business = next(landed_buckets) if landed_rows else raw_schema.empty_table()
            if predicted_rows:
                yield joined_rows(next(predicted_buckets), business, id_column)


def joined_rows(predictions: pa.Table, raw: pa.Table, id_column: str) -> pa.Table:
    """`predictions` in their order with the business columns (those of `raw` besides the id) of each id's first raw row."""
    ids = predictions.column(id_column)
    raw_ids = raw.column(id_column).cast(ids.type)
    business = raw.drop_columns([id_column])
    if not (len(raw_ids) == len(ids) and raw_ids.equals(ids)):
        # Predictions keep the order of the day's valid raw rows, a subsequence of the raw ones; a lookup of each
        # id's first raw row (repeated ids are quarantined, never scored) keeps that order, where a hash join
        # would not (and costs several times more).
        business = business.take(pc.index_in(ids, value_set=raw_ids))
    return pa.Table.from_arrays(
        [*predictions.columns, *business.columns], names=[*predictions.column_names, *business.column_names]
    )


STAGE = Stage(
    assets=(PUBLISHED_PREDICTIONS,),
    day=publish_day,
    specs=lambda domain: [PUBLISHED_PREDICTIONS_SPEC],
    reads=(PREDICTIONS, RAW_TRANSACTIONS),
    domain_declaration=True,
)
