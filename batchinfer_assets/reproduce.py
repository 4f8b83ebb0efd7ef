"""Reproduce one day's scoring in a place of its own and say whether it matches the original byte for byte.

Usage: python -m batchinfer_assets.reproduce DAY [--run-id RUN_ID] [--dry-run]

Reads the day's first materialization of `predictions` (or the one RUN_ID wrote) from the Dagster instance in
DAGSTER_HOME and runs `reproduce_predictions_job` in that instance: the archived input snapshot, scored with the
recorded model version (refused when its artifact checksum changed), batch size, precision and threshold, into
`{BATCHINFER_STORAGE_URI}/reproductions/{reproduction run id}/predictions/dt={DAY}/`. The live `predictions`
table, the prediction database and every asset's history stay as they were.
Exit status: 0 identical to the original byte for byte; 1 written but different (what differs is printed);
2 cannot reproduce (no such scoring, its model or archived input is gone or changed; nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import dagster as dg

from batchinfer_assets.jobs import reproduce_predictions_job
from batchinfer_assets.reproduction import CannotReproduceError, original_scoring, recorded

REPRODUCE_JOB = reproduce_predictions_job.name
IDENTICAL, DIFFERENT, CANNOT = 0, 1, 2


def reproduce_day(
    defs: dg.Definitions, instance: dg.DagsterInstance, day: str, run_id: str | None = None
) -> tuple[int, str, dg.ExecuteInProcessResult]:
    """Run the reproduction of `day`: (exit status, verdict or reason, the run's result)."""
    job = defs.resolve_job_def(REPRODUCE_JOB)
    result = job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={
            "ops": {"reproduce_predictions": {"config": {"day": day, "original_run_id": run_id}}},
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
        },
    )
    if not result.success:
        failures = result.get_step_failure_events()
        data = failures[0].step_failure_data if failures else None
        reason = (data.user_failure_data.description if data and data.user_failure_data else None) or (
            data.error.message.strip() if data and data.error else f"reproduction run {result.run_id} failed; see its logs"
        )
        return CANNOT, reason, result
    output = next(e for e in result.all_node_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT)
    metadata = output.step_output_data.metadata
    return (IDENTICAL if metadata["identical"].value else DIFFERENT), str(metadata["verdict"].value), result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchinfer_assets.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("day", help="the partition to reproduce, YYYY-MM-DD")
    parser.add_argument("--run-id", help="reproduce the scoring this run did (default: the day's first)")
    parser.add_argument("--dry-run", action="store_true", help="print the original scoring, run nothing")
    args = parser.parse_args(argv)

    from batchinfer_assets.definitions import defs

    with dg.DagsterInstance.get() as instance:
        try:
            original = original_scoring(instance, args.day, args.run_id)
            meta = recorded(original)
        except CannotReproduceError as error:
            print(f"cannot reproduce {args.day}: {error}", file=sys.stderr)
            return CANNOT
        print(
            f"{args.day}: scored by run {original.run_id} with {meta['pinned_model_uri']} "
            f"(checksum {str(meta['model_artifact_checksum'])[:12]}), input {meta['input_snapshot_hash']}, "
            f"batch size {meta['batch_size']}"
        )
        if args.dry_run:
            return IDENTICAL
        status, verdict, result = reproduce_day(defs, instance, args.day, args.run_id)
        print(f"reproduction run {result.run_id}: {verdict}", file=sys.stdout if status == IDENTICAL else sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
