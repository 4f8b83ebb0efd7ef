"""Predictions published to the database downstream apps query."""

from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from batchinfer_assets.assets._run import DayState, PipelineRun
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.lib.redaction import redact
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
    rows = publishable_rows(run, state)
    written = run.prediction_db.replace_partition(state.day, rows, lineage, domain=run.domain)
    del rows
    run.prediction_db.release_connections()
    run.context.log.info(f"{state.day}: published {written:,} rows to {redact(run.prediction_db.url)}")
    yield run.materialization(
        PUBLISHED_PREDICTIONS,
        state,
        {"table": PREDICTIONS_TABLE, "database": redact(run.prediction_db.url), "row_count": written},
        inputs=(PREDICTIONS, RAW_TRANSACTIONS, SCORING_MODEL),
        model_version=scored.get("model_version"),
    )


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


def publishable_rows(run: PipelineRun, state: DayState) -> pa.Table:
    """The day's predictions joined by the domain's id column with the raw rows' business columns."""
    id_column, business_columns = run.domain.id_column, list(run.domain.business_columns)
    predictions = run.store.read_partition(PREDICTIONS, state.day, columns=[id_column, *SCORE_COLUMNS])
    if state.raw is not None:
        raw = pa.Table.from_pandas(state.raw.loc[:, [id_column, *business_columns]], preserve_index=False)
    else:
        raw = run.store.read_partition(RAW_TRANSACTIONS, state.day, columns=[id_column, *business_columns])
    ids = predictions.column(id_column)
    raw_ids = raw.column(id_column).cast(ids.type)
    business = raw.select(business_columns)
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
    reads=(PREDICTIONS,),
    domain_declaration=True,
)
