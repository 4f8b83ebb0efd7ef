"""One home for the daily pipeline's asset keys (which are also its table names) and check names."""

RAW_TRANSACTIONS = "raw_transactions"
TRANSACTION_FEATURES = "transaction_features"
QUARANTINED_TRANSACTIONS = "quarantined_transactions"
INPUT_SNAPSHOT = "input_snapshot"
SCORING_MODEL = "scoring_model"
PREDICTIONS = "predictions"
DRIFT_METRICS = "drift_metrics"
PUBLISHED_PREDICTIONS = "published_predictions"
PREDICTION_PERFORMANCE = "prediction_performance"

INVALID_SHARE_CHECK = "invalid_share_within_limit"
SIGNATURE_CHECK = "matches_model_signature"
DRIFT_CHECK = "drift_check"
PERFORMANCE_CHECK = "performance_within_floor"

# Every scored input snapshot by content hash, for exact reproduction (not an asset table itself).
INPUT_SNAPSHOT_ARCHIVE = "input_snapshot_archive"

# Per-day side files kept beside the tables (not asset tables themselves).
DRIFT_REPORTS_FOLDER = "drift_reports"
