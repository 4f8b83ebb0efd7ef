"""Drift of each day's inputs and scores against the model's training reference."""

import dagster as dg
import pandas as pd

from batchinfer_assets.assets._partitions import per_day_metadata, run_days
from batchinfer_assets.lib.features import CALENDAR_FEATURES
from batchinfer_assets.lib.drift import compute_drift, drift_markdown, empty_drift_table, summarize_drift
from batchinfer_assets.partitions import daily_partitions
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource

TRAINING_REFERENCE = "training"
SCORE_COLUMN = "score"


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="monitoring",
    kinds={"scipy", "parquet"},
    code_version="1",
)
def drift_metrics(
    context: dg.AssetExecutionContext,
    input_snapshot: dict[str, pd.DataFrame],
    predictions: dict[str, pd.DataFrame],
    model_registry: MlflowModelRegistryResource,
) -> dg.Output:
    """Per-feature and score drift of the day against the reference the model was trained on."""
    resolved = model_registry.resolve()
    reference = model_registry.load_reference(resolved)
    columns = [*(c for c in resolved.input_columns if c not in CALENDAR_FEATURES), SCORE_COLUMN]
    tables: dict[str, pd.DataFrame] = {}
    verdicts: dict[str, dict[str, object]] = {}
    for day in run_days(context):
        if reference is None:
            tables[day] = empty_drift_table()
            verdicts[day] = {"drifted_features": 0, "dataset_drifted": False}
            continue
        current = input_snapshot[day].assign(**{SCORE_COLUMN: predictions[day]["score"].to_numpy()})
        tables[day] = compute_drift(current, reference, columns, TRAINING_REFERENCE)
        summary = summarize_drift(tables[day])
        verdicts[day] = {
            "drifted_features": summary.drifted,
            "judged_features": summary.judged,
            "score_drifted": summary.score_drifted,
            "dataset_drifted": summary.dataset_drifted,
        }
        if summary.dataset_drifted:
            context.log.warning(f"{day}: drifted ({summary.drifted} of {summary.judged} judged columns)")

    days = run_days(context)
    last = tables[days[-1]]
    metadata: dict[str, object] = {
        "reference": TRAINING_REFERENCE if reference is not None else "none",
        "not_compared": dg.MetadataValue.json(sorted(set(resolved.input_columns) & set(CALENDAR_FEATURES))),
        "model_version": resolved.version,
        "drifted_features": sum(int(v["drifted_features"]) for v in verdicts.values()),
        "dataset_drifted": any(bool(v["dataset_drifted"]) for v in verdicts.values()),
        "most_drifted": dg.MetadataValue.md(drift_markdown(last) if len(last) else "no reference to compare with"),
        **per_day_metadata(verdicts),
    }
    if reference is None:
        metadata["note"] = f"model {resolved.pinned_uri} has no reference sample logged; drift was not computed"
        context.log.warning(str(metadata["note"]))
    return dg.Output(tables, metadata=metadata)
