"""One home for the run tags the pipeline sets or reads (`tables.py` is the one for asset and check names)."""

# Set by the pipeline step on its run: the days it covers, `START...END` (read by people, in the Runs list).
DAYS_TAG = "batchinfer/days"
# Set by the pipeline step as it goes: the day and stage, and an estimate of the time left (read by people, in the
# Runs list and on the run page).
PROGRESS_TAG = "batchinfer/progress"
# Set by the pipeline step on its run: `host/pid/start` of the process running it (`run_worker.this_worker`); read by
# `orphaned_runs_sensor`, which fails a STARTED run whose worker on this host is gone.
WORKER_TAG = "batchinfer/worker"
# Set by a person on a launch or backfill: the registered model version to score with instead of following the
# alias; read by `MlflowModelRegistryResource.resolve_for_run` and by the predictions' `lineage` metadata.
MODEL_VERSION_TAG = "batchinfer/model_version"
# Set by a person on a launch: rows per forward pass (scores differ in their last bits between batch sizes); read
# by the pipeline step, which scores with it.
BATCH_SIZE_TAG = "batchinfer/batch_size"
# Set by 0.3 and 0.4 launches to score an archived input; read by the pipeline step only to refuse such a run,
# naming `python -m batchinfer_assets.reproduce`.
INPUT_SNAPSHOT_HASH_TAG = "batchinfer/input_snapshot_hash"
# Set by `reproduce_predictions_job` on its run: the run id of the scoring it reproduces; read by
# `publish_predictions_sensor`, which leaves such runs' predictions unpublished.
REPRODUCES_TAG = "batchinfer/reproduces"
# Set by `reproduce_predictions_job` once it has compared: `identical` or `different` (read by people).
VERDICT_TAG = "batchinfer/reproduction"
# Set by the sensors on the runs they request: `predictions` (publishing) or `labels` (re-evaluation); read by people.
TRIGGER_TAG = "batchinfer/trigger"
