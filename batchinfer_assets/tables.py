"""One home for the daily pipeline's asset keys (which are also its table names) and check names."""

import dagster as dg

RAW_TRANSACTIONS = "raw_transactions"
TRANSACTION_FEATURES = "transaction_features"
QUARANTINED_TRANSACTIONS = "quarantined_transactions"
INPUT_SNAPSHOT = "input_snapshot"
SCORING_MODEL = "scoring_model"
PREDICTIONS = "predictions"
DRIFT_METRICS = "drift_metrics"
PUBLISHED_PREDICTIONS = "published_predictions"

# Day-partitioned assets in the order the pipeline computes them for each day.
PIPELINE_ORDER = (
    RAW_TRANSACTIONS,
    TRANSACTION_FEATURES,
    QUARANTINED_TRANSACTIONS,
    INPUT_SNAPSHOT,
    PREDICTIONS,
    DRIFT_METRICS,
    PUBLISHED_PREDICTIONS,
)

INVALID_SHARE_CHECK = "invalid_share_within_limit"
SIGNATURE_CHECK = "matches_model_signature"
DRIFT_CHECK = "drift_check"

# Per-day side files kept beside the tables (not asset tables themselves).
DRIFT_REPORTS_FOLDER = "drift_reports"


def key(name: str) -> dg.AssetKey:
    """The asset key of a pipeline table."""
    return dg.AssetKey(name)
