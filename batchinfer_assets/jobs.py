"""Jobs over the daily pipeline."""

import dagster as dg

from batchinfer_assets.freshness import FRESHNESS_CHECKS
from batchinfer_assets.tables import PREDICTIONS, SCORING_MODEL

daily_scoring_job = dg.define_asset_job(
    name="daily_scoring_job",
    # Freshness checks are left to their sensor: inside a scoring run they would judge yesterday's partition
    # while the run is writing other days, and record "late" in a run that succeeded.
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(SCORING_MODEL) - dg.AssetSelection.checks(*FRESHNESS_CHECKS),
    description="Ingest, validate, featurize, snapshot, score, measure drift, publish and evaluate one or more days.",
)

reproduce_predictions_job = dg.define_asset_job(
    name="reproduce_predictions_job",
    selection=dg.AssetSelection.assets(PREDICTIONS).without_checks(),
    description=(
        "Re-score one day as it was first scored: run with tags batchinfer/model_version, "
        "batchinfer/input_snapshot_hash and batchinfer/batch_size (`python -m batchinfer_assets.reproduce DAY` sets them)."
    ),
)
