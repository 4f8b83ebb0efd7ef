"""Re-score one day exactly as it was first scored: same model version, same archived input, same batch size.

Usage: python -m batchinfer_assets.reproduce DAY [--run-id RUN_ID] [--dry-run]

Reads the day's first materialization of `predictions` (or the one RUN_ID wrote) from the Dagster instance in
DAGSTER_HOME, and runs `predictions` for DAY in that instance with the run tags that pin it:
`batchinfer/model_version`, `batchinfer/input_snapshot_hash` (the archived input) and `batchinfer/batch_size`.
The run is tagged `batchinfer/reproduces=<original run id>`; the publishing sensor leaves such runs alone, so
what downstream apps read does not change. Exit status 0 when the new predictions carry the original's data
version (model checksum, input hash, batch size, precision and threshold all equal), 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from batchinfer_assets.assets._run import BATCH_SIZE_TAG, INPUT_SNAPSHOT_HASH_TAG
from batchinfer_assets.jobs import reproduce_predictions_job
from batchinfer_assets.resources.model_registry import MODEL_VERSION_TAG
from batchinfer_assets.sensors import REPRODUCES_TAG
from batchinfer_assets.tables import PREDICTIONS

REPRODUCE_JOB = reproduce_predictions_job.name


def original_scoring(instance: dg.DagsterInstance, day: str, run_id: str | None = None) -> dg.EventLogRecord:
    """The day's first materialization of `predictions`, or the one `run_id` wrote."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(PREDICTIONS), asset_partitions=[day]), limit=1000, ascending=True
    ).records
    if run_id is not None:
        records = [r for r in records if r.run_id == run_id]
    if not records:
        raise LookupError(f"no materialization of {PREDICTIONS} for {day}" + (f" by run {run_id}" if run_id else "") + " in this instance")
    return records[0]


def reproduction_tags(record: dg.EventLogRecord) -> dict[str, str]:
    """The run tags that re-score the recorded day exactly."""
    metadata = record.asset_materialization.metadata
    missing = [k for k in ("model_version", "input_snapshot_hash", "batch_size") if k not in metadata]
    if missing:
        raise LookupError(f"run {record.run_id} recorded no {missing} for this day (scored before lineage was recorded)")
    return {
        MODEL_VERSION_TAG: str(metadata["model_version"].value),
        INPUT_SNAPSHOT_HASH_TAG: str(metadata["input_snapshot_hash"].value),
        BATCH_SIZE_TAG: str(metadata["batch_size"].value),
        REPRODUCES_TAG: record.run_id,
    }


def reproduce_day(defs: dg.Definitions, instance: dg.DagsterInstance, day: str, run_id: str | None = None) -> tuple[bool, dg.ExecuteInProcessResult]:
    """Re-score `day` as the original scoring did; (same data version as the original, the run's result)."""
    original = original_scoring(instance, day, run_id)
    job = defs.resolve_job_def(REPRODUCE_JOB)
    result = job.execute_in_process(
        instance=instance,
        partition_key=day,
        tags=reproduction_tags(original),
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    if not result.success:
        return False, result
    new = next(
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        and e.event_specific_data.materialization.asset_key == dg.AssetKey(PREDICTIONS)
    )
    return new.tags.get(DATA_VERSION_TAG) == original.asset_materialization.tags.get(DATA_VERSION_TAG), result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchinfer_assets.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("day", help="the partition to re-score, YYYY-MM-DD")
    parser.add_argument("--run-id", help="reproduce the scoring this run did (default: the day's first)")
    parser.add_argument("--dry-run", action="store_true", help="print the original and the run tags, run nothing")
    args = parser.parse_args(argv)

    from batchinfer_assets.definitions import defs

    with dg.DagsterInstance.get() as instance:
        try:
            original = original_scoring(instance, args.day, args.run_id)
            tags = reproduction_tags(original)
        except LookupError as error:
            print(f"cannot reproduce {args.day}: {error}", file=sys.stderr)
            return 2
        print(f"{args.day}: first scored by run {original.run_id}; tags " + " ".join(f"{k}={v}" for k, v in tags.items()))
        if args.dry_run:
            return 0
        identical, result = reproduce_day(defs, instance, args.day, args.run_id)
        if not result.success:
            print(f"reproduction run {result.run_id} failed; see its logs", file=sys.stderr)
            return 1
        print(f"reproduction run {result.run_id}: " + ("same data version as the original" if identical else "DIFFERENT data version"))
        return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
