"""Predictions published to the database downstream apps query."""

from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from batchinfer_assets.assets._run import DayState, PipelineRun
from batchinfer_assets.tables import PREDICTIONS, PUBLISHED_PREDICTIONS, RAW_TRANSACTIONS

# What a downstream app needs to act on a score without a join back to the raw data.
BUSINESS_COLUMNS = ("customer_id", "event_time", "amount", "merchant_category")
PREDICTION_COLUMNS = ("transaction_id", "score", "label", "model_name", "model_version")

PUBLISHED_PREDICTIONS_SPEC = dg.AssetSpec(
    PUBLISHED_PREDICTIONS,
    deps=[PREDICTIONS, RAW_TRANSACTIONS],
    description=(
        "The day's predictions with their business columns in the prediction database, replacing that day's "
        "rows in one transaction."
    ),
    kinds={"sqlalchemy"},
)


def publish_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization]:
    """Replace the day's rows in the prediction database with its predictions and business columns."""
    rows = publishable_rows(run, state)
    written = run.prediction_db.replace_partition(state.day, rows)
    run.context.log.info(f"{state.day}: published {written:,} rows to {run.prediction_db.safe_url()}")
    yield run.materialization(
        PUBLISHED_PREDICTIONS,
        state,
        {"table": "predictions", "database": run.prediction_db.safe_url(), "row_count": written},
        inputs=(PREDICTIONS, RAW_TRANSACTIONS),
    )


def publishable_rows(run: PipelineRun, state: DayState) -> pa.Table:
    """The day's predictions joined by transaction_id with the raw rows' business columns."""
    predictions = run.store.read_partition(PREDICTIONS, state.day, columns=list(PREDICTION_COLUMNS))
    if state.raw is not None:
        raw = pa.Table.from_pandas(state.raw.loc[:, ["transaction_id", *BUSINESS_COLUMNS]], preserve_index=False)
    else:
        raw = run.store.read_partition(RAW_TRANSACTIONS, state.day, columns=["transaction_id", *BUSINESS_COLUMNS])
    ids = raw.column("transaction_id")
    if pc.count_distinct(ids).as_py() != raw.num_rows:
        # Repeated ids are quarantined and never scored; keep one row per id so the join cannot multiply rows.
        first = raw.group_by("transaction_id", use_threads=False).aggregate([(c, "first") for c in BUSINESS_COLUMNS])
        raw = pa.table({"transaction_id": first["transaction_id"], **{c: first[f"{c}_first"] for c in BUSINESS_COLUMNS}})
    return predictions.join(raw, "transaction_id", join_type="left outer")
