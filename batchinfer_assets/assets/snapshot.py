"""The validated, content-hashed input the model sees, and its fit to the model's signature."""

import dagster as dg
import pandas as pd
from pandera.errors import SchemaErrors

from batchinfer_assets.assets._partitions import daily_asset, record_each_day, run_days
from batchinfer_assets.lib.features import FEATURE_COLUMNS
from batchinfer_assets.lib.hashing import frame_content_hash
from batchinfer_assets.lib.model_loading import mlflow_uris
from batchinfer_assets.partitions import daily_partitions
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource, ResolvedModel
from batchinfer_assets.schemas import feature_schema

SNAPSHOT_COLUMNS = ("transaction_id", *FEATURE_COLUMNS)
SIGNATURE_CHECK = "matches_model_signature"
# Signature types the scorer's float32 feature matrix satisfies without losing information.
_FLOAT32_COMPATIBLE_TYPES = frozenset({"float", "double"})
_SAMPLE_ROWS = 10


@daily_asset(
    kinds={"pandas", "parquet"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            SIGNATURE_CHECK,
            asset="input_snapshot",
            blocking=True,
            description="Every input column of the model's signature is in the snapshot with a compatible dtype.",
            partitions_def=daily_partitions,
        )
    ],
)
def input_snapshot(
    context: dg.AssetExecutionContext,
    transaction_features: dict[str, pd.DataFrame],
    model_registry: MlflowModelRegistryResource,
):
    """The day's validated model input; its content hash is its data version."""
    schema = feature_schema(FEATURE_COLUMNS)
    snapshots: dict[str, pd.DataFrame] = {}
    hashes: dict[str, str] = {}
    days = run_days(context)
    for day in days:
        snapshots[day] = _validated(schema, transaction_features[day], day)
        hashes[day] = frame_content_hash(snapshots[day])
    metadata: dict[str, object] = {
        "row_count": sum(len(s) for s in snapshots.values()),
        "columns": dg.MetadataValue.json(list(SNAPSHOT_COLUMNS)),
    }
    record_each_day(context, {d: {"row_count": len(snapshots[d]), "content_hash": hashes[d]} for d in days})
    if len(days) == 1:
        # Dagster keeps one data version per step output; a range's days carry their hash as metadata.
        yield dg.Output(snapshots, metadata=metadata, data_version=dg.DataVersion(hashes[days[0]]))
    else:
        yield dg.Output(snapshots, metadata=metadata)

    resolved = model_registry.resolve()
    dtypes = {c: str(t) for c, t in next(iter(snapshots.values())).dtypes.items()}
    problems = signature_mismatches(resolved.input_columns, signature_types(resolved), dtypes)
    yield dg.AssetCheckResult(
        check_name=SIGNATURE_CHECK,
        passed=not problems,
        metadata={
            "model_uri": resolved.pinned_uri,
            "model_input_columns": dg.MetadataValue.json(list(resolved.input_columns)),
            "problems": dg.MetadataValue.json(problems),
        },
        description=(
            f"{len(problems)} input column(s) of {resolved.pinned_uri} do not fit the snapshot: {'; '.join(problems)}"
            if problems
            else f"all {len(resolved.input_columns)} input columns of {resolved.pinned_uri} present as float32"
        ),
    )


def _validated(schema, features: pd.DataFrame, day: str) -> pd.DataFrame:
    """The snapshot columns of one day, or a failure naming each broken column and check (NaN and inf included)."""
    missing = [c for c in SNAPSHOT_COLUMNS if c not in features.columns]
    if missing:
        raise dg.Failure(
            description=f"input_snapshot {day}: feature column(s) missing: {', '.join(missing)}", allow_retries=False
        )
    try:
        return schema.validate(features.loc[:, list(SNAPSHOT_COLUMNS)], lazy=True).reset_index(drop=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
        counts = cases.groupby(["column", "check"], dropna=False).size()
        summary = {f"{column}: {check}": int(n) for (column, check), n in counts.items()}
        raise dg.Failure(
            description=(
                f"input_snapshot {day}: features fail validation, nothing is passed to the model: "
                + "; ".join(f"{k} ({n} rows)" for k, n in summary.items())
            ),
            metadata={
                "day": day,
                "failures": dg.MetadataValue.json(summary),
                "sample_failure_cases": dg.MetadataValue.md(
                    cases.head(_SAMPLE_ROWS).astype("string").fillna("<null>").to_markdown(index=False)
                ),
            },
            allow_retries=False,
        ) from errors


def signature_types(resolved: ResolvedModel) -> dict[str, str]:
    """The type names of the model signature's input columns (empty when the signature is a tensor spec)."""
    from mlflow.models import get_model_info

    with mlflow_uris(resolved.tracking_uri, resolved.registry_uri):
        signature = get_model_info(resolved.pinned_uri).signature
    if signature is None or signature.inputs is None or signature.inputs.is_tensor_spec():
        return {}
    return {spec.name: getattr(spec.type, "name", str(spec.type)) for spec in signature.inputs.inputs if spec.name is not None}


def signature_mismatches(
    input_columns: tuple[str, ...], types: dict[str, str], snapshot_dtypes: dict[str, str]
) -> list[str]:
    """One message per model input column the snapshot lacks or cannot feed at the signature's type."""
    problems = []
    for column in input_columns:
        if column not in snapshot_dtypes:
            problems.append(f"{column}: required by the model, missing from the snapshot")
        elif snapshot_dtypes[column] != "float32":
            problems.append(f"{column}: snapshot dtype {snapshot_dtypes[column]}, the scorer feeds float32")
        elif column in types and types[column] not in _FLOAT32_COMPATIBLE_TYPES:
            problems.append(f"{column}: the signature expects {types[column]}, the snapshot holds float32")
    return problems
