"""Row validation with quarantine, and the model-ready features of the valid rows."""

from collections import Counter
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pyarrow as pa

from batchinfer_assets import schemas
from batchinfer_assets.assets._run import DayBlocked, DayState, PipelineRun
from batchinfer_assets.assets.raw_transactions import raw_of
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.resources.prediction_db import published_text_lengths
from batchinfer_assets.schemas import split_valid_rows
from batchinfer_assets.tables import (
    INPUT_SNAPSHOT,
    INVALID_SHARE_CHECK,
    QUARANTINED_TRANSACTIONS,
    RAW_TRANSACTIONS,
    TRANSACTION_FEATURES,
)

_SAMPLE_ROWS = 10

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
    """Validate the day's raw rows, quarantine the bad ones, build features from the rest, and gate the day."""
    domain = run.domain
    raw = raw_of(run, state)
    valid, bad = split_valid_rows(raw, state.date, domain, published_text_lengths(domain))
    reasons = reason_counts(bad)
    share = len(bad) / len(raw) if len(raw) else 0.0
    if len(bad):
        run.context.log.warning(f"{state.day}: quarantined {len(bad):,} of {len(raw):,} {domain.rows_name}: {reasons}")

    if run.wants(QUARANTINED_TRANSACTIONS, state.day):
        uri = run.store.write_partition(QUARANTINED_TRANSACTIONS, state.day, pa.Table.from_pandas(bad, preserve_index=False))
        yield run.materialization(
            QUARANTINED_TRANSACTIONS,
            state,
            {"row_count": len(bad), "quarantined_rows": len(bad), "reasons": dg.MetadataValue.json(reasons), "uri": dg.MetadataValue.path(uri)},
            inputs=(RAW_TRANSACTIONS,),
        )
    if not run.wants(TRANSACTION_FEATURES, state.day):
        return
    features = domain.feature_frame(valid, state.day)
    unknown = vocabulary_misses(domain, valid)
    for column, count in unknown.items():
        outside = count / len(valid) if len(valid) else 0.0
        if outside > domain.vocabulary_warn_share:
            run.context.log.warning(
                f"{state.day}: {count:,} of {len(valid):,} {domain.rows_name} ({outside:.1%}) have a {column} outside the "
                f"domain's vocabulary (over {domain.vocabulary_warn_share:.0%}): the features treat them all alike"
            )
    uri = run.store.write_partition(TRANSACTION_FEATURES, state.day, pa.Table.from_pandas(features, preserve_index=False))
    state.features = features
    metadata = {"row_count": len(features), "feature_count": len(domain.feature_columns), "uri": dg.MetadataValue.path(uri)}
    if domain.vocabularies:
        metadata["outside_vocabulary"] = dg.MetadataValue.json(unknown)
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
            f"{share:.3%} of {len(raw):,} rows quarantined, over the {limit:.2%} limit: the day is blocked"
            if blocked
            else f"{share:.3%} of {len(raw):,} rows quarantined (limit {limit:.2%})"
        ),
        metadata={
            "max_invalid_fraction": limit,
            "invalid_fraction": round(share, 6),
            "rows": len(raw),
            "quarantined_rows": len(bad),
            "reasons": dg.MetadataValue.json(reasons),
            "sample_failing_rows": dg.MetadataValue.md(sample_markdown(bad) if len(bad) else "none"),
        },
    )
    if blocked:
        raise DayBlocked(
            INVALID_SHARE_CHECK,
            f"{len(bad):,} of {len(raw):,} rows ({share:.3%}) failed validation, over the {limit:.2%} limit ({reasons})",
        )


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


def features_of(run: PipelineRun, state: DayState) -> pd.DataFrame:
    """The day's features: from this run's memory, else from storage after re-applying the quarantine gate.

    A day blocked by `invalid_share_within_limit` stays blocked for every later run until its raw data is
    fixed and its features rebuilt, whatever is selected.
    """
    if state.features is None:
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
        state.features = run.store.read_partition(TRANSACTION_FEATURES, state.day).to_pandas()
    return state.features


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
