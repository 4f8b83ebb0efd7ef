"""Predictions published to the database downstream apps query."""

import dagster as dg
import pandas as pd

from batchinfer_assets.assets._partitions import daily_asset, record_each_day, run_days
from batchinfer_assets.resources.prediction_db import PREDICTIONS_TABLE, PredictionDatabaseResource


@daily_asset(
    kinds={"sqlalchemy"},
    code_version="1",
)
def published_predictions(
    context: dg.AssetExecutionContext,
    predictions: dict[str, pd.DataFrame],
    prediction_db: PredictionDatabaseResource,
) -> dg.MaterializeResult:
    """The day's predictions upserted into the prediction database, replacing that day's rows atomically."""
    written = {}
    for day in run_days(context):
        written[day] = prediction_db.replace_partition(day, predictions[day])
        context.log.info(f"{day}: published {written[day]} rows to {PREDICTIONS_TABLE}")
    record_each_day(context, {day: {"row_count": n} for day, n in written.items()})
    return dg.MaterializeResult(
        metadata={
            "table": PREDICTIONS_TABLE,
            "database": prediction_db.safe_url(),
            "row_count": sum(written.values()),
        }
    )
