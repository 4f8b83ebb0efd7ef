"""Jobs over the daily pipeline."""

import dagster as dg

daily_scoring_job = dg.define_asset_job(
    name="daily_scoring_job",
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model"),
    description="Ingest, validate, featurize, snapshot, score, measure drift and publish one or more days.",
)
