"""Row validation with quarantine, and the model-ready features of the valid rows."""

from collections import Counter

import dagster as dg
import pandas as pd

from batchinfer_assets.assets._partitions import as_date, daily_multi_asset, record_each_day, run_days
from batchinfer_assets.lib.features import FEATURE_COLUMNS, FEATURE_DESCRIPTIONS, build_features
from batchinfer_assets.partitions import daily_partitions
from batchinfer_assets.resources.validation import ValidationPolicyResource
from batchinfer_assets.schemas import split_valid_rows

INVALID_SHARE_CHECK = "invalid_share_within_limit"
_SAMPLE_ROWS = 10


@daily_multi_asset(
    outs={
        "transaction_features": dg.AssetOut(
            description="Model-ready numeric features, one row per valid transaction.",
            kinds={"pandas", "parquet"},
            code_version="1",
            metadata={"features": dg.MetadataValue.json(FEATURE_DESCRIPTIONS)},
        ),
        "quarantined_transactions": dg.AssetOut(
            description="Raw rows that failed validation, with the reason for each row.",
            kinds={"pandas", "parquet"},
            code_version="1",
        ),
    },
    check_specs=[
        dg.AssetCheckSpec(
            INVALID_SHARE_CHECK,
            asset="transaction_features",
            blocking=True,
            description="The day's quarantined share stays within the validation policy's limit.",
            # Per-partition results in the UI for one-day runs; a range run records one result whose
            # `by_day` metadata holds each day's figures (Dagster ties a check result to the step's partition).
            partitions_def=daily_partitions,
        )
    ],
)
def transaction_features(
    context: dg.AssetExecutionContext,
    raw_transactions: dict[str, pd.DataFrame],
    validation_policy: ValidationPolicyResource,
):
    """Validates each day's raw rows, quarantines the bad ones and builds features from the rest."""
    features: dict[str, pd.DataFrame] = {}
    quarantine: dict[str, pd.DataFrame] = {}
    shares: dict[str, float] = {}
    reasons: dict[str, dict[str, int]] = {}
    for day in run_days(context):
        raw = raw_transactions[day]
        valid, bad = split_valid_rows(raw, as_date(day))
        features[day] = build_features(valid)
        quarantine[day] = bad
        shares[day] = len(bad) / len(raw) if len(raw) else 0.0
        reasons[day] = _reason_counts(bad)
        if len(bad):
            context.log.warning(f"{day}: quarantined {len(bad)} of {len(raw)} rows: {reasons[day]}")

    yield dg.Output(
        features,
        output_name="transaction_features",
        metadata={
            "row_count": sum(len(f) for f in features.values()),
            "feature_count": len(FEATURE_COLUMNS),
        },
    )
    record_each_day(context, {d: {"row_count": len(f)} for d, f in features.items()}, "transaction_features")
    total_bad = sum(len(q) for q in quarantine.values())
    yield dg.Output(
        quarantine,
        output_name="quarantined_transactions",
        metadata={
            "quarantined_rows": total_bad,
            "reasons": dg.MetadataValue.json(_merge_counts(reasons.values())),
        },
    )
    record_each_day(
        context,
        {
            d: {"quarantined_rows": len(q), "row_count": len(q), "reasons": dg.MetadataValue.json(reasons[d])}
            for d, q in quarantine.items()
        },
        "quarantined_transactions",
    )

    limit = validation_policy.max_invalid_fraction
    blocked = sorted(d for d, share in shares.items() if share > limit)
    worst = max(shares, key=lambda d: shares[d])
    # The sample comes from the days that are blocked (the worst day when none is), one slice per day.
    sample_days = blocked or [worst]
    sample = pd.concat(
        [quarantine[d].head(_SAMPLE_ROWS).assign(dt=d) for d in sample_days], ignore_index=True
    ).head(_SAMPLE_ROWS * 3)
    by_day = {
        d: {
            "rows": len(raw_transactions[d]),
            "quarantined": len(quarantine[d]),
            "invalid_fraction": round(shares[d], 6),
            "blocked": d in blocked,
            "reasons": reasons[d],
        }
        for d in shares
    }
    yield dg.AssetCheckResult(
        check_name=INVALID_SHARE_CHECK,
        asset_key="transaction_features",
        passed=not blocked,
        metadata={
            "max_invalid_fraction": limit,
            "invalid_fraction": shares[worst],
            "rows": sum(d["rows"] for d in by_day.values()),
            "quarantined_rows": total_bad,
            "reasons": dg.MetadataValue.json(_merge_counts(reasons.values())),
            "blocked_days": dg.MetadataValue.json(blocked),
            "sample_failing_rows": dg.MetadataValue.md(
                _sample_markdown(sample) if len(sample) else "none"
            ),
            "by_day": dg.MetadataValue.json(by_day),
        },
        description=(
            f"{len(blocked)} day(s) over the {limit:.2%} limit: "
            + ", ".join(f"{d} ({shares[d]:.3%})" for d in blocked)
            if blocked
            else f"worst day {worst}: {shares[worst]:.3%} quarantined (limit {limit:.2%})"
        ),
    )


def _sample_markdown(sample: pd.DataFrame) -> str:
    columns = ["dt", "reason", *[c for c in sample.columns if c not in ("dt", "reason")]]
    return sample.loc[:, columns].astype("string").fillna("<null>").to_markdown(index=False)


def _reason_counts(quarantined: pd.DataFrame) -> dict[str, int]:
    if quarantined.empty:
        return {}
    counts: Counter[str] = Counter()
    for reason in quarantined["reason"].astype(str):
        counts.update(r.strip() for r in reason.split(";") if r.strip())
    return dict(counts.most_common())


def _merge_counts(counts: object) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:  # type: ignore[attr-defined]
        total.update(c)
    return dict(total.most_common())
