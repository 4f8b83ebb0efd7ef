"""Row validation with quarantine, and the model-ready features of the valid rows."""

import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from batchinfer_assets import schemas
from batchinfer_assets.assets._run import DayBlocked, DayState, PipelineRun
from batchinfer_assets.assets.raw_transactions import raw_of
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.lib.parquet_store import PartitionWriter
from batchinfer_assets.lib.spill import ROW_NUMBER, DayBuckets, RowOrderedSpill, bucket_count, bucket_of, later_occurrences
from batchinfer_assets.resources.prediction_db import published_text_lengths
from batchinfer_assets.schemas import quarantine_reasons, split_by_reasons, split_valid_rows
from batchinfer_assets.tables import (
    INPUT_SNAPSHOT,
    INVALID_SHARE_CHECK,
    QUARANTINED_TRANSACTIONS,
    RAW_TRANSACTIONS,
    TRANSACTION_FEATURES,
)

_SAMPLE_ROWS = 10
# A big day's row number while it is split into buckets, and rows read from storage at a time to split it.
_ROW = ROW_NUMBER
_READ_ROWS = 1 << 20

def feature_specs(domain) -> list[dg.AssetSpec]:
    """The features and the quarantine of the domain's days."""
    return [
        dg.AssetSpec(
            TRANSACTION_FEATURES,
            deps=[RAW_TRANSACTIONS],
            description=f"Model-ready numeric features of the {domain.name} domain, one row per valid row.",
            kinds={"parquet"},
            metadata={"features": dg.MetadataValue.json(dict(domain.feature_descriptions))},
        ),
        dg.AssetSpec(
            QUARANTINED_TRANSACTIONS,
            deps=[RAW_TRANSACTIONS],
            description="Raw rows that failed validation, with the reason for each row.",
            kinds={"parquet"},
        ),
    ]


INVALID_SHARE_CHECK_SPEC = dg.AssetCheckSpec(
    INVALID_SHARE_CHECK,
    asset=TRANSACTION_FEATURES,
    blocking=True,
    description=(
        "The day's quarantined share stays within the validation policy's limit; a day over it is not "
        "snapshotted, scored or published (other days of the same run go on)."
    ),
)


def featurize_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Validate the day's raw rows, quarantine the bad ones, build features from the rest, and gate the day.

    A day of more than `day_chunk_rows` rows goes through in buckets that keep each of the domain's groups whole
    (`validated_parts`), so memory holds one bucket whatever the day's size.
    """
    domain = run.domain
    rows = bad_rows = 0
    reasons: Counter[str] = Counter()
    sample: pd.DataFrame | None = None
    unknown: Counter[str] = Counter({column: 0 for column in domain.vocabularies})
    wants_quarantine = run.wants(QUARANTINED_TRANSACTIONS, state.day)
    wants_features = run.wants(TRANSACTION_FEATURES, state.day)
    with contextlib.ExitStack() as stack:
        # A day in buckets is spilled part by part and written merged back into the order of its rows, so its files
        # are those of the whole day in memory (the same content hash whatever day_chunk_rows is).
        outputs: dict[str, PartitionWriter | RowOrderedSpill] = {}

        def output(asset: str, table: pa.Table, ordered: bool) -> PartitionWriter | RowOrderedSpill:
            if asset not in outputs:
                outputs[asset] = stack.enter_context(
                    RowOrderedSpill(table.schema, run.spill_dir, run.day_chunk_rows // part.parts) if ordered else run.store.partition_writer(asset, state.day, table.schema)
                )
            return outputs[asset]

        for part in validated_parts(run, state, wants_features):
            bad = part.bad
            ordered = part.valid_rows is not None
            rows += part.valid_count + len(bad)
            bad_rows += len(bad)
            reasons.update(reason_counts(bad))
            sample = _first_failing(sample, bad, part.bad_rows)
            if wants_quarantine:
                table = pa.Table.from_pandas(bad, preserve_index=False)
                _write(output(QUARANTINED_TRANSACTIONS, table, ordered), table, part.bad_rows)
            if not wants_features:
                continue
            features = part.features
            unknown.update(part.outside_vocabulary)
            table = pa.Table.from_pandas(features, preserve_index=False)
            _write(output(TRANSACTION_FEATURES, table, ordered), table, part.valid_rows)
            state.features = None if ordered else features
        for asset, spilled in list(outputs.items()):
            if isinstance(spilled, RowOrderedSpill):
                # Committed with the other writers as the stack closes: a failure before then writes nothing.
                writer = stack.enter_context(run.store.partition_writer(asset, state.day, spilled.schema))
                for chunk in spilled.merged(run.day_chunk_rows):
                    writer.write(chunk)
    reasons = Counter(dict(reasons.most_common()))
    sample = sample.drop(columns=[_ROW]) if sample is not None else None
    share = bad_rows / rows if rows else 0.0
    if bad_rows:
        run.context.log.warning(f"{state.day}: quarantined {bad_rows:,} of {rows:,} {domain.rows_name}: {dict(reasons)}")
    if wants_quarantine:
        yield run.materialization(
            QUARANTINED_TRANSACTIONS,
            state,
            {
                "row_count": bad_rows,
                "quarantined_rows": bad_rows,
                "reasons": dg.MetadataValue.json(dict(reasons)),
                "uri": dg.MetadataValue.path(run.store.partition_uri(QUARANTINED_TRANSACTIONS, state.day)),
            },
            inputs=(RAW_TRANSACTIONS,),
        )
    if not wants_features:
        return
    valid_rows = rows - bad_rows
    for column, count in unknown.items():
        outside = count / valid_rows if valid_rows else 0.0
        if outside > domain.vocabulary_warn_share:
            run.context.log.warning(
                f"{state.day}: {count:,} of {valid_rows:,} {domain.rows_name} ({outside:.1%}) have a {column} outside the "
                f"domain's vocabulary (over {domain.vocabulary_warn_share:.0%}): the features treat them all alike"
            )
    metadata = {
        "row_count": valid_rows,
        "feature_count": len(domain.feature_columns),
        "uri": dg.MetadataValue.path(run.store.partition_uri(TRANSACTION_FEATURES, state.day)),
    }
    if domain.vocabularies:
        metadata["outside_vocabulary"] = dg.MetadataValue.json(dict(unknown))
    yield run.materialization(TRANSACTION_FEATURES, state, metadata, inputs=(RAW_TRANSACTIONS,))
    limit = run.validation_policy.max_invalid_fraction
    blocked = share > limit
    yield run.check(
        TRANSACTION_FEATURES,
        INVALID_SHARE_CHECK,
        state,
        passed=not blocked,
        blocking=True,
        description=(
            f"{share:.3%} of {rows:,} rows quarantined, over the {limit:.2%} limit: the day is blocked"
            if blocked
            else f"{share:.3%} of {rows:,} rows quarantined (limit {limit:.2%})"
        ),
        metadata={
            "max_invalid_fraction": limit,
            "invalid_fraction": round(share, 6),
            "rows": rows,
            "quarantined_rows": bad_rows,
            "reasons": dg.MetadataValue.json(dict(reasons)),
            "sample_failing_rows": dg.MetadataValue.md(sample_markdown(sample) if sample is not None and len(sample) else "none"),
        },
    )
    if blocked:
        raise DayBlocked(
            INVALID_SHARE_CHECK,
            f"{bad_rows:,} of {rows:,} rows ({share:.3%}) failed validation, over the {limit:.2%} limit ({dict(reasons)})",
        )


def _first_failing(sample: pd.DataFrame | None, bad: pd.DataFrame, row_numbers: np.ndarray | None) -> pd.DataFrame:
    """The day's first `_SAMPLE_ROWS` quarantined rows so far (by their number in the day), with this part's added."""
    head = bad.head(_SAMPLE_ROWS)
    head = head.assign(**{_ROW: row_numbers[: len(head)] if row_numbers is not None else np.arange(len(head))})
    if sample is None:
        return head
    both = pd.concat([sample, head], ignore_index=True)
    return both.iloc[np.argsort(both[_ROW].to_numpy(), kind="stable")[:_SAMPLE_ROWS]].reset_index(drop=True)


def _write(out: PartitionWriter | RowOrderedSpill, table: pa.Table, row_numbers: np.ndarray | None) -> None:
    if isinstance(out, RowOrderedSpill):
        out.add(table, row_numbers)
    else:
        out.write(table)


@dataclass(frozen=True)
class ValidatedPart:
    """The day, or one bucket of it with the rows' numbers in the day, validated: its valid rows' count, its quarantined
    rows, and the valid rows' features and vocabulary misses (None and empty when the features are not wanted)."""

    valid_count: int
    bad: pd.DataFrame
    features: pd.DataFrame | None = None
    outside_vocabulary: dict[str, int] = field(default_factory=dict)
    valid_rows: np.ndarray | None = None
    bad_rows: np.ndarray | None = None
    parts: int = 1


def validated_part(
    frame: pd.DataFrame,
    row_numbers: np.ndarray | None,
    repeated: np.ndarray | None,
    day: str,
    domain,
    lengths: dict[str, int],
    with_features: bool,
    parts: int,
) -> ValidatedPart:
    """Validate the day (`row_numbers` None) or one bucket of whole groups, quarantine its bad rows, and build the
    features of the rest when `with_features`."""
    date = dt.date.fromisoformat(day)
    if row_numbers is None:
        (valid, bad), valid_rows, bad_rows = split_valid_rows(frame, date, domain, lengths), None, None
    else:
        reasons = quarantine_reasons(frame, date, domain, lengths, repeated=repeated)
        quarantined = reasons.notna().to_numpy()
        (valid, bad), valid_rows, bad_rows = split_by_reasons(frame, reasons), row_numbers[~quarantined], row_numbers[quarantined]
    if not with_features:
        return ValidatedPart(len(valid), bad, None, {}, valid_rows, bad_rows, parts)
    features = domain.feature_frame(valid, day)
    return ValidatedPart(len(valid), bad, features, vocabulary_misses(domain, valid), valid_rows, bad_rows, parts)


def validated_parts(run: PipelineRun, state: DayState, with_features: bool) -> Iterator[ValidatedPart]:
    """The day validated (and featurized when `with_features`): once for a day that fits in memory, else once per bucket.

    A bigger day is split by the domain's `group_column` (each group whole, so its features are those of the whole
    day) into buckets spilled to local disk; an id repeated across buckets is found in a second, id-keyed split of
    (id, row number) and quarantined as within one part: every occurrence after the day's first. An engine with a
    day runner (Ray) computes the buckets on its cluster instead, the same parts with the same results.
    """
    domain, day = run.domain, state.day
    lengths = published_text_lengths(domain)
    rows = len(state.raw) if state.raw is not None else run.store.row_count(RAW_TRANSACTIONS, day)
    count = bucket_count(rows, run.day_chunk_rows)
    if count > 1 and domain.group_column is None:
        run.context.log.warning(
            f"{day}: {rows:,} rows, over day_chunk_rows={run.day_chunk_rows:,}, but domain {domain.name!r} declares no "
            "group_column, so its features may depend on the whole day: the day is validated and featurized in memory "
            "(declare group_column, the id column for row-local features, to bound it)"
        )
        count = 1
    if count == 1:
        yield validated_part(raw_of(run, state), None, None, day, domain, lengths, with_features, 1)
        return
    id_column, key = domain.id_column, domain.group_column
    runner = run.scoring_engine.day_runner(run.context)
    where = "on the cluster" if runner is not None else "in this process"
    run.context.log.info(f"{day}: {rows:,} rows in {count} buckets of whole {key} groups {where} (day_chunk_rows={run.day_chunk_rows:,})")
    compute_args = (day, domain, lengths, with_features, count)
    if runner is not None:
        yield from runner.bucket_results(run.store, RAW_TRANSACTIONS, day, key, id_column, count, validated_part, compute_args)
        return
    schema = run.store.schema(RAW_TRANSACTIONS, day)
    spilled = schema.append(pa.field(_ROW, pa.int64()))
    id_schema = pa.schema([schema.field(id_column), pa.field(_ROW, pa.int64())])
    with DayBuckets(count, spilled, run.spill_dir) as buckets, DayBuckets(count, id_schema, run.spill_dir) as ids:
        offset = 0
        for batch in run.store.iter_batches(RAW_TRANSACTIONS, day, batch_size=min(run.day_chunk_rows, _READ_ROWS)):
            numbers = pa.array(np.arange(offset, offset + batch.num_rows, dtype=np.int64))
            offset += batch.num_rows
            table = pa.Table.from_batches([batch]).append_column(_ROW, numbers)
            buckets.add(table, bucket_of(batch.column(key), count))
            if key != id_column:
                ids.add(pa.table([batch.column(id_column), numbers], schema=id_schema), bucket_of(batch.column(id_column), count))
        repeated = later_occurrences(ids, id_column) if key != id_column else np.empty(0, dtype=np.int64)
        for part in buckets:
            numbers = part.column(_ROW).to_numpy()
            frame = part.drop_columns([_ROW]).to_pandas()
            yield validated_part(frame, numbers, np.isin(numbers, repeated), *compute_args)


def vocabulary_misses(domain, valid: pd.DataFrame) -> dict[str, int]:
    """Per vocabulary column of the domain: how many valid rows hold a value outside its declared vocabulary."""
    return {
        column: int((~valid[column].isin(list(vocabulary)) & valid[column].notna()).sum())
        for column, vocabulary in domain.vocabularies.items()
    }


def stored_invalid_share(run: PipelineRun, state: DayState) -> tuple[float, int, int]:
    """(share, quarantined, rows) of the day as stored, for runs that read features without recomputing them."""
    valid = run.store.row_count(TRANSACTION_FEATURES, state.day)
    bad = run.store.row_count(QUARANTINED_TRANSACTIONS, state.day) if run.store.has_partition(QUARANTINED_TRANSACTIONS, state.day) else 0
    rows = valid + bad
    return (bad / rows if rows else 0.0), bad, rows


def feature_parts(run: PipelineRun, state: DayState, compute: Callable[..., pd.DataFrame], args: tuple) -> Iterator[pd.DataFrame]:
    """`compute(features, *args)` of the day's features: from this run's memory, else from storage (in parts of
    `day_chunk_rows` rows, computed on the cluster by an engine with a day runner) after re-applying the quarantine gate.

    A day blocked by `invalid_share_within_limit` stays blocked for every later run until its raw data is
    fixed and its features rebuilt, whatever is selected.
    """
    if state.features is not None:
        yield compute(state.features, *args)
        return
    # The stored counts judge the day only when the quarantine and the features come from the same raw data.
    run.require_inputs_agree(state, INPUT_SNAPSHOT, (TRANSACTION_FEATURES, QUARANTINED_TRANSACTIONS))
    share, bad, rows = stored_invalid_share(run, state)
    limit = run.validation_policy.max_invalid_fraction
    if share > limit:
        raise DayBlocked(
            INVALID_SHARE_CHECK,
            f"the stored features hold {rows - bad:,} of {rows:,} rows: {bad:,} ({share:.3%}) were quarantined, "
            f"over the {limit:.2%} limit; fix the raw data and re-materialize transaction_features",
        )
    if rows - bad <= run.day_chunk_rows:
        state.features = run.store.read_partition(TRANSACTION_FEATURES, state.day).to_pandas()
        yield compute(state.features, *args)
        return
    runner = run.scoring_engine.day_runner(run.context)
    if runner is not None:
        yield from runner.chunk_results(run.store, TRANSACTION_FEATURES, state.day, run.day_chunk_rows, compute, args)
        return
    for batch in run.store.iter_batches(TRANSACTION_FEATURES, state.day, batch_size=run.day_chunk_rows):
        yield compute(batch.to_pandas(), *args)


def sample_markdown(quarantined: pd.DataFrame) -> str:
    """The first failing rows as a Markdown table, reason first."""
    sample = quarantined.head(_SAMPLE_ROWS)
    columns = ["reason", *[c for c in sample.columns if c != "reason"]]
    return sample.loc[:, columns].astype("string").fillna("<null>").to_markdown(index=False)


def reason_counts(quarantined: pd.DataFrame) -> dict[str, int]:
    """How many quarantined rows failed each `column: check`, most frequent first."""
    if quarantined.empty:
        return {}
    counts: Counter[str] = Counter()
    for reason, n in quarantined["reason"].astype(str).value_counts().items():
        for part in reason.split(";"):
            if part.strip():
                counts[part.strip()] += int(n)
    return dict(counts.most_common())


STAGE = Stage(
    assets=(TRANSACTION_FEATURES, QUARANTINED_TRANSACTIONS),
    day=featurize_day,
    specs=feature_specs,
    checks=(INVALID_SHARE_CHECK_SPEC,),
    reads=(RAW_TRANSACTIONS,),
    code=(schemas,),
    domain_declaration=True,
    feature_code=True,
)
