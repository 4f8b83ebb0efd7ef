"""Jobs over the daily pipeline."""

import dagster as dg

from batchinfer_assets.reproduction import reproduce_predictions
from batchinfer_assets.tables import SCORING_MODEL

daily_scoring_job = dg.define_asset_job(
    name="daily_scoring_job",
    # Every pipeline asset with its checks; the on-time checks sit on the external delivery_deadline, outside it.
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(SCORING_MODEL),
    description="Ingest, validate, featurize, snapshot, score, measure drift, publish and evaluate one or more days.",
)


@dg.job(
    name="reproduce_predictions_job",
    description=(
        "Re-score one day as a past run scored it (archived input, that model version, batch size and precision) "
        "into reproductions/<run id>/ and compare with the original's files; live tables and the database are not "
        "touched (run: python -m batchinfer_assets.reproduce DAY)."
    ),
)
def reproduce_predictions_job():
    """One reproduction: score, write under reproductions/, compare."""
    reproduce_predictions()
