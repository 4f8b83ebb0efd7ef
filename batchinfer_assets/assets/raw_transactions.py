"""The day's raw rows as they landed."""

import contextlib
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pyarrow as pa

from batchinfer_assets.assets._run import DayState, PipelineRun
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.lib.hashing import ContentHasher
from batchinfer_assets.tables import RAW_TRANSACTIONS


def raw_spec(domain) -> dg.AssetSpec:
    """The day's landed rows of the domain."""
    return dg.AssetSpec(
        RAW_TRANSACTIONS,
        description=f"The day's {domain.rows_name} as they landed, conformed to the {domain.name} domain's columns and types.",
        kinds={"parquet"},
    )


def ingest_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization]:
    """Stream the day from the landing zone into storage, hashing it on the way; its content hash is its data version.

    A day of at most `day_chunk_rows` rows is also kept in memory for the day's next stages; a bigger one is read
    back from storage by each stage, so memory holds one piece of the landing files at a time.
    """
    source = run.landing_zone.location(state.date)
    hasher = ContentHasher()
    kept: list[pd.DataFrame] | None = []
    rows = 0
    schema: pa.Schema | None = None
    with contextlib.ExitStack() as stack:
        writer = None
        for piece in run.landing_zone.iter_day(state.date, run.domain, run.day_chunk_rows):
            table = pa.Table.from_pandas(piece, schema=schema, preserve_index=False)
            if writer is None:
                schema = table.schema
                writer = stack.enter_context(run.store.partition_writer(RAW_TRANSACTIONS, state.day, schema))
            writer.write(table)
            hasher.update(table)
            rows += len(piece)
            if kept is not None and rows <= run.day_chunk_rows:
                kept.append(piece)
            else:
                kept = None
    state.raw = None if kept is None else (pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0].reset_index(drop=True))
    uri = run.store.partition_uri(RAW_TRANSACTIONS, state.day)
    run.context.log.info(f"{state.day}: {rows:,} {run.domain.rows_name} from {source}")
    content_hash = hasher.hexdigest(schema)
    yield run.materialization(
        RAW_TRANSACTIONS,
        state,
        {"source": source, "row_count": rows, "content_hash": content_hash, "uri": dg.MetadataValue.path(uri)},
        inputs=(),
        data_version=content_hash,
    )


def raw_of(run: PipelineRun, state: DayState):
    """The day's raw rows: from this run's memory, else from storage."""
    if state.raw is None:
        state.raw = run.store.read_partition(RAW_TRANSACTIONS, state.day).to_pandas()
    return state.raw


STAGE = Stage(assets=(RAW_TRANSACTIONS,), day=ingest_day, specs=lambda domain: [raw_spec(domain)], domain_declaration=True)
