"""The validated, content-hashed input the model sees, and its fit to the run's model signature."""

import contextlib
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pyarrow as pa
from pandera.errors import SchemaErrors

from batchinfer_assets import schemas
from batchinfer_assets.assets._run import DayBlocked, DayState, PipelineRun
from batchinfer_assets.assets.transaction_features import feature_parts
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.lib.hashing import ContentHasher
from batchinfer_assets.lib.model_loading import mlflow_uris
from batchinfer_assets.resources.model_registry import ResolvedModel
from batchinfer_assets.schemas import feature_schema, validate_uncopied
from batchinfer_assets.tables import (
    INPUT_SNAPSHOT,
    SIGNATURE_CHECK,
    TRANSACTION_FEATURES,
)

# Signature types the scorer's float32 feature matrix satisfies without losing information.
_FLOAT32_COMPATIBLE_TYPES = frozenset({"float", "double"})
_SAMPLE_ROWS = 10

def snapshot_spec(domain) -> dg.AssetSpec:
    """The day's validated model input."""
    return dg.AssetSpec(
        INPUT_SNAPSHOT,
        deps=[TRANSACTION_FEATURES],
        description=(
            f"The day's validated model input ({domain.id_column} + feature columns); its content hash is its data version."
        ),
        kinds={"pandera", "parquet"},
    )

SIGNATURE_CHECK_SPEC = dg.AssetCheckSpec(
    SIGNATURE_CHECK,
    asset=INPUT_SNAPSHOT,
    blocking=True,
    description="Every input column of the run's model signature is in the snapshot with a compatible dtype.",
)


def snapshot_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Validate the day's features into its snapshot, record its hash, and check it fits the run's model.

    Part by part as the features come (`feature_parts`, validated on the cluster for a big day on the Ray engine): the
    hash is taken as the rows stream into storage.
    """
    hasher = ContentHasher()
    rows, dtypes, snapshot = 0, {}, None
    with contextlib.ExitStack() as stack:
        writer = None
        for snapshot in feature_parts(run, state, validated_snapshot, (state.day, run.domain)):
            table = pa.Table.from_pandas(snapshot, preserve_index=False)
            if writer is None:
                writer = stack.enter_context(run.store.partition_writer(INPUT_SNAPSHOT, state.day, table.schema))
                dtypes = {c: str(t) for c, t in snapshot.dtypes.items()}
                state.snapshot = snapshot
            else:
                state.snapshot = None
            writer.write(table)
            hasher.update(table)
            rows += len(snapshot)
    content_hash = hasher.hexdigest()
    uri = run.store.partition_uri(INPUT_SNAPSHOT, state.day)
    yield run.materialization(
        INPUT_SNAPSHOT,
        state,
        {
            "row_count": rows,
            "content_hash": content_hash,
            "columns": dg.MetadataValue.json(list(run.domain.snapshot_columns)),
            "uri": dg.MetadataValue.path(uri),
        },
        inputs=(TRANSACTION_FEATURES,),
        data_version=content_hash,
    )
    resolved = run.resolved
    problems = signature_mismatches(
        resolved.input_columns, run_signature_types(run), dtypes
    )
    yield run.check(
        INPUT_SNAPSHOT,
        SIGNATURE_CHECK,
        state,
        passed=not problems,
        blocking=True,
        description=(
            f"{len(problems)} input column(s) of {resolved.pinned_uri} do not fit the snapshot: {'; '.join(problems)}"
            if problems
            else f"all {len(resolved.input_columns)} input columns of {resolved.pinned_uri} present as float32"
        ),
        metadata={
            "model_uri": resolved.pinned_uri,
            "model_version": resolved.version,
            "model_input_columns": dg.MetadataValue.json(list(resolved.input_columns)),
            "problems": dg.MetadataValue.json(problems),
        },
    )
    if problems:
        raise DayBlocked(SIGNATURE_CHECK, f"the snapshot cannot feed {resolved.pinned_uri}: {'; '.join(problems)}")


def validated_snapshot(features: pd.DataFrame, day: str, domain) -> pd.DataFrame:
    """The snapshot columns of one day, or a failure naming each broken column and check (NaN and inf included)."""
    columns = list(domain.snapshot_columns)
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise DayBlocked(
            INPUT_SNAPSHOT,
            f"feature column(s) missing: {', '.join(missing)}; the stored transaction_features predate them: "
            f"dg launch --assets 'transaction_features*' --partition {day}",
        )
    try:
        schema = feature_schema(domain.feature_columns, domain.id_column)
        return validate_uncopied(schema, features.loc[:, columns]).reset_index(drop=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
        counts = cases.groupby(["column", "check"], dropna=False).size()
        summary = "; ".join(f"{column}: {check} ({int(n)} rows)" for (column, check), n in counts.items())
        raise DayBlocked(INPUT_SNAPSHOT, f"features fail validation, nothing is passed to the model: {summary}") from errors


def run_signature_types(run: PipelineRun) -> dict[str, str]:
    """The run model's signature types, read once per run."""
    if "signature_types" not in run.cache:
        run.cache["signature_types"] = signature_types(run.resolved)
    return run.cache["signature_types"]


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


STAGE = Stage(
    assets=(INPUT_SNAPSHOT,),
    day=snapshot_day,
    specs=lambda domain: [snapshot_spec(domain)],
    checks=(SIGNATURE_CHECK_SPEC,),
    reads=(TRANSACTION_FEATURES,),
    code=(schemas,),
    domain_declaration=True,
    uses_model=True,
)
