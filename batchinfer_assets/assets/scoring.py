"""The registered model and the predictions it makes."""

import time

import dagster as dg
import numpy as np
import pandas as pd

from batchinfer_assets.assets._partitions import per_day_metadata, run_days
from batchinfer_assets.lib.hashing import frame_content_hash
from batchinfer_assets.partitions import daily_partitions
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.resources.torch_scorer import TorchScorerResource


@dg.observable_source_asset(group_name="model", description="The registered model the scorer resolves.")
def scoring_model(model_registry: MlflowModelRegistryResource) -> dg.ObserveResult:
    """Observes which model version the configured URI resolves to; that version is the data version."""
    resolved = model_registry.resolve()
    return dg.ObserveResult(
        data_version=dg.DataVersion(resolved.version),
        metadata={
            "model_uri": resolved.requested_uri,
            "pinned_uri": resolved.pinned_uri,
            "model_name": resolved.name or "",
            "model_version": resolved.version,
            "run_id": resolved.run_id,
            "artifact_checksum": resolved.artifact_checksum,
            "input_columns": dg.MetadataValue.json(list(resolved.input_columns)),
        },
    )


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[scoring_model],
    group_name="scoring",
    kinds={"pytorch", "parquet"},
    code_version="1",
    pool="scoring",
)
def predictions(
    context: dg.AssetExecutionContext,
    input_snapshot: dict[str, pd.DataFrame],
    model_registry: MlflowModelRegistryResource,
    torch_scorer: TorchScorerResource,
) -> dg.Output:
    """A score and a label for every row of the day's input snapshot, from one pinned model version."""
    resolved = model_registry.resolve()
    model = torch_scorer.load(resolved)
    context.log.info(f"scoring with {resolved.pinned_uri} on {torch_scorer.resolved_device()}")

    outputs: dict[str, pd.DataFrame] = {}
    hashes: dict[str, str] = {}
    started = time.perf_counter()
    for day in run_days(context):
        snapshot = input_snapshot[day]
        scores = torch_scorer.score(model, snapshot)
        outputs[day] = pd.DataFrame(
            {
                "transaction_id": snapshot["transaction_id"].astype("string"),
                "score": scores.astype(np.float32),
                "label": (scores >= torch_scorer.threshold).astype(np.int8),
                "model_name": pd.array([resolved.name or ""] * len(snapshot), dtype="string"),
                "model_version": pd.array([resolved.version] * len(snapshot), dtype="string"),
            }
        )
        hashes[day] = frame_content_hash(snapshot)
    elapsed = time.perf_counter() - started
    rows = sum(len(o) for o in outputs.values())
    days = run_days(context)
    return dg.Output(
        outputs,
        metadata={
            "model_uri": resolved.requested_uri,
            "pinned_model_uri": resolved.pinned_uri,
            "model_name": resolved.name or "",
            "model_version": resolved.version,
            "model_run_id": resolved.run_id,
            "model_artifact_checksum": resolved.artifact_checksum,
            "input_snapshot_hash": hashes[days[0]] if len(days) == 1 else dg.MetadataValue.json(hashes),
            "row_count": rows,
            "rows_per_second": round(rows / elapsed, 1) if elapsed > 0 else float(rows),
            "device": torch_scorer.resolved_device(),
            "batch_size": torch_scorer.effective_batch_size(),
            "threshold": torch_scorer.threshold,
            "positive_rate": sum(int(o["label"].sum()) for o in outputs.values()) / rows if rows else 0.0,
            **per_day_metadata({d: len(o) for d, o in outputs.items()}),
        },
    )
