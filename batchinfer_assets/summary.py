"""Prints where a range of days landed: files, row counts, drift verdicts and published rows.

Usage: python -m batchinfer_assets.summary START END
"""

from __future__ import annotations

import datetime as dt
import sys

import pandas as pd

from batchinfer_assets.assets.drift_metrics import SCORE_COLUMN, TRAILING_REFERENCE, TRAINING_REFERENCE, drifted_feature_counts
from batchinfer_assets.project import build_resources
from batchinfer_assets.lib.parquet_store import PartitionNotFoundError
from batchinfer_assets.lib.redaction import redact
from batchinfer_assets.resources.prediction_db import PredictionDatabaseResource
from batchinfer_assets.resources.table_storage import open_table_store
from batchinfer_assets.settings import Settings
from batchinfer_assets.tables import DRIFT_METRICS, PREDICTIONS, QUARANTINED_TRANSACTIONS


def summarize(settings: Settings, start: dt.date, end: dt.date) -> pd.DataFrame:
    """One row per day: predictions, quarantined rows, drifted features per reference and published rows."""
    resources = build_resources(settings)
    store = open_table_store(settings.storage_uri, resources["table_storage"].s3)
    # Outside a run nothing resolves EnvVar references, so the database resource is built from the value.
    database = PredictionDatabaseResource(url=settings.predictions_db_url)
    rows = []
    for offset in range((end - start).days + 1):
        day = (start + dt.timedelta(days=offset)).isoformat()
        try:
            preds = store.read_partition(PREDICTIONS, day, columns=["label", "model_version"])
            drift = store.read_partition(DRIFT_METRICS, day).to_pandas()
            quarantined = store.read_partition(QUARANTINED_TRANSACTIONS, day).num_rows
        except PartitionNotFoundError as exc:
            rows.append({"dt": day, "status": f"missing: {exc}"})
            continue
        rows.append(
            {
                "dt": day,
                "predictions": preds.num_rows,
                "flagged": int(pd.Series(preds.column("label").to_numpy()).sum()),
                "model_version": ",".join(sorted(set(preds.column("model_version").to_pylist()))),
                "quarantined": quarantined,
                **{f"drifted_vs_{ref}": _share(drifted_feature_counts(drift), ref) for ref in (TRAINING_REFERENCE, TRAILING_REFERENCE)},
                "score_drifted": bool(drift.loc[drift["feature"] == SCORE_COLUMN, "drifted"].any()),
                "published_rows": database.count_partition(day),
            }
        )
    return pd.DataFrame(rows)


def _share(counts: dict[str, tuple[int, int]], reference: str) -> str:
    """`drifted/judged` features against one reference, or `-` where the day was not compared with it."""
    drifted, judged = counts.get(reference, (0, 0))
    return f"{drifted}/{judged}" if judged else "-"


def main(argv: list[str]) -> int:
    """Print the summary table for START..END (inclusive)."""
    start, end = (dt.date.fromisoformat(a) for a in argv[1:3])
    settings = Settings.from_env()
    table = summarize(settings, start, end)
    print(f"storage: {settings.storage_uri}\nprediction database: {database_label(settings)}")
    print(table.to_string(index=False))
    return 0 if "status" not in table.columns else 1


def database_label(settings: Settings) -> str:
    """The prediction database URL without secrets."""
    return redact(settings.predictions_db_url)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
