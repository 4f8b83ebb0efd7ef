"""The day's raw rows as they landed."""

from collections.abc import Iterator

import dagster as dg
import pyarrow as pa

from batchinfer_assets.assets._run import DayState, PipelineRun
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.lib.hashing import table_content_hash
from batchinfer_assets.tables import RAW_TRANSACTIONS


def raw_spec(domain) -> dg.AssetSpec:
    """The day's landed rows of the domain."""
    return dg.AssetSpec(
        RAW_TRANSACTIONS,
        description=f"The day's {domain.rows_name} as they landed, conformed to the {domain.name} domain's columns and types.",
        kinds={"parquet"},
    )


def ingest_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization]:
    """Read the day from the landing zone and store it; its content hash is its data version."""
    frame = run.landing_zone.load_day(state.date, run.domain)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    uri = run.store.write_partition(RAW_TRANSACTIONS, state.day, table)
    state.raw = frame
    source = run.landing_zone.location(state.date)
    run.context.log.info(f"{state.day}: {len(frame):,} {run.domain.rows_name} from {source}")
    content_hash = table_content_hash(table)
    yield run.materialization(
        RAW_TRANSACTIONS,
        state,
        {"source": source, "row_count": len(frame), "content_hash": content_hash, "uri": dg.MetadataValue.path(uri)},
        inputs=(),
        data_version=content_hash,
    )


def raw_of(run: PipelineRun, state: DayState):
    """The day's raw rows: from this run's memory, else from storage."""
    if state.raw is None:
        state.raw = run.store.read_partition(RAW_TRANSACTIONS, state.day).to_pandas()
    return state.raw


STAGE = Stage(assets=(RAW_TRANSACTIONS,), day=ingest_day, specs=lambda domain: [raw_spec(domain)], domain_declaration=True)
