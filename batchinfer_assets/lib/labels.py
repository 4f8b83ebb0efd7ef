"""Delayed labels: reading a transaction day's label files, keeping the latest label per id, and the synthetic truth.

Labels for a day keep arriving for weeks, as new files in the day's folder. A later label for the same id
replaces an earlier one (a chargeback reversed, a case confirmed); the latest `labelled_at` wins. What was
superseded is counted, never silently dropped: `duplicates` (label rows beyond the one kept per id) and
`contradictory` (ids labelled both 0 and 1), so a feed that suddenly flips many labels shows in the metadata.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batchinfer_assets.lib.landing import DayFile, LandingDataError, day_files
from batchinfer_assets.lib.synthetic import LABEL_COLUMN, generate_day

LABEL_COLUMNS: tuple[str, ...] = ("transaction_id", "is_fraud", "labelled_at")

# The synthetic release schedule: a share of transactions is never labelled; the others after a log-normal
# delay with a median of 2.5 days (about 80% within a week, 1% after 30 days), capped at 60 days.
NEVER_LABELLED_SHARE = 0.03
MEDIAN_DELAY_DAYS = 2.5
DELAY_SIGMA = 1.1
MAX_DELAY_DAYS = 60.0
_LABELS_STREAM = 0x1ABE15


# How far a label's `labelled_at` may lie ahead of this clock (the labelling system's clock may run a little fast);
# beyond it the time is wrong, and a label dated years ahead would win over every real label of its id for good.
CLOCK_SKEW = pd.Timedelta(minutes=5)


class LabelsDataError(LandingDataError):
    """A label file of a day cannot be used: that day's evaluation stops, naming the file and the column.

    A `LandingDataError` because it is one (bad data landed by an upstream system): the pipeline stops the
    day and goes on with the others, and the step is not retried.
    """


@dataclass(frozen=True)
class DayLabels:
    """The labels known for one transaction day: one row per id, and what was superseded on the way."""

    labels: pd.DataFrame  # transaction_id (string), is_fraud (int8), labelled_at (timestamp, UTC)
    rows_read: int
    duplicates: int
    contradictory: int
    sources: tuple[str, ...]
    # Label rows ignored as impossible: dated after now (beyond CLOCK_SKEW), or before their transaction's day began.
    future: int = 0
    before_transaction_day: int = 0

    @property
    def latest_labelled_at(self) -> pd.Timestamp | None:
        """When the newest label known for the day was given: how fresh the day's labels are."""
        return None if self.labels.empty else self.labels["labelled_at"].max()


def empty_labels() -> pd.DataFrame:
    """A labels frame with no rows and the conformed types."""
    return pd.DataFrame(
        {
            "transaction_id": pd.array([], dtype="string"),
            "is_fraud": np.array([], dtype=np.int8),
            "labelled_at": pd.Series([], dtype="datetime64[us, UTC]"),
        }
    )


def labels_table(labels: pd.DataFrame) -> pa.Table:
    """A conformed labels frame as Arrow, e.g. to hash what a day's evaluation saw."""
    return pa.table(
        {
            "transaction_id": pa.array(labels["transaction_id"], pa.string()),
            "is_fraud": pa.array(labels["is_fraud"].to_numpy(dtype=np.int8)),
            "labelled_at": pa.array(labels["labelled_at"].dt.tz_convert(None).to_numpy("datetime64[us]"), pa.timestamp("us", tz="UTC")),
        }
    )


def conform_labels(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The label columns in their types, or an error naming the source and the offending column."""
    missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise LabelsDataError(f"labels file {source}: required column(s) missing: {', '.join(missing)}")
    for column in LABEL_COLUMNS:
        if frame[column].isna().any():
            raise LabelsDataError(f"labels file {source}: column {column!r} has {int(frame[column].isna().sum())} null value(s)")
    fraud = frame["is_fraud"]
    if pd.api.types.is_bool_dtype(fraud):
        fraud = fraud.astype(np.int8)
    elif not pd.api.types.is_numeric_dtype(fraud) or not fraud.isin([0, 1]).all():
        bad = fraud[~fraud.isin([0, 1])].tolist()[0] if pd.api.types.is_numeric_dtype(fraud) else fraud.dtype
        raise LabelsDataError(f"labels file {source}: column 'is_fraud' must hold 0 or 1, found {bad!r}")
    labelled_at = frame["labelled_at"]
    if not pd.api.types.is_datetime64_any_dtype(labelled_at):
        raise LabelsDataError(f"labels file {source}: column 'labelled_at' must be a timestamp, found {labelled_at.dtype}")
    # A timestamp without a zone is read as UTC, the contract's zone.
    labelled_at = labelled_at.dt.tz_localize("UTC") if labelled_at.dt.tz is None else labelled_at.dt.tz_convert("UTC")
    return pd.DataFrame(
        {
            "transaction_id": frame["transaction_id"].astype("string"),
            "is_fraud": fraud.astype(np.int8),
            "labelled_at": labelled_at.astype("datetime64[us, UTC]"),
        }
    ).reset_index(drop=True)


def latest_labels(
    frames: Sequence[pd.DataFrame], sources: Sequence[str], *, day: dt.date | None = None, now: pd.Timestamp | None = None
) -> DayLabels:
    """One label per id, the latest by `labelled_at` (on equal times, the later file), with what was superseded.

    With `now`, labels dated after it (beyond CLOCK_SKEW) are ignored; with `day` (the transactions' day), labels
    dated before that day began. Both are counted, and dropped before the latest is chosen, so such a label never
    hides a real one.
    """
    frames = [f for f in frames if not f.empty]
    if not frames:
        return DayLabels(empty_labels(), rows_read=0, duplicates=0, contradictory=0, sources=tuple(sources))
    stacked = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    rows_read = len(stacked)
    future = early = np.zeros(len(stacked), dtype=bool)
    if now is not None:
        future = (stacked["labelled_at"] > now + CLOCK_SKEW).to_numpy()
    if day is not None:
        early = (stacked["labelled_at"] < pd.Timestamp(day, tz="UTC")).to_numpy()
    if future.any() or early.any():
        stacked = stacked[~(future | early)].reset_index(drop=True)
    # A stable sort keeps file order among equal times, so the later file wins a tie.
    ordered = stacked.sort_values("labelled_at", kind="stable")
    kept = ordered.drop_duplicates("transaction_id", keep="last")
    duplicates = len(stacked) - len(kept)
    contradictory = 0
    if duplicates:
        repeated = stacked[stacked["transaction_id"].duplicated(keep=False)]
        contradictory = int((repeated.groupby("transaction_id", sort=False)["is_fraud"].nunique() > 1).sum())
    return DayLabels(
        labels=kept.sort_values("transaction_id", kind="stable").reset_index(drop=True),
        rows_read=rows_read,
        duplicates=duplicates,
        contradictory=contradictory,
        sources=tuple(sources),
        future=int(future.sum()),
        before_transaction_day=int((early & ~future).sum()),
    )


def label_files(root: str, day: dt.date, s3_client: Any = None) -> list[DayFile]:
    """The data files of `{root}/dt={day}/` (local folder or S3 prefix), found as the landing zone finds its own; none when absent."""
    return day_files(root, day, s3_client)[2]


def files_fingerprint(files: Sequence[DayFile]) -> str:
    """Changes whenever a file is added, removed, rewritten or touched: what the re-evaluation sensor watches."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{f.size}\0{f.modified}\n".encode())
    return f"{len(files)}:{digest.hexdigest()[:16]}"


def read_label_files(files: Sequence[DayFile], day: dt.date | None = None, now: pd.Timestamp | None = None) -> DayLabels:
    """Every label file of a day, checked and reduced to the latest plausible label per id (see `latest_labels`)."""
    frames = []
    for f in files:
        with f.open() as path:
            try:
                schema = pq.read_schema(path)
            except (pa.ArrowException, OSError) as exc:
                raise LabelsDataError(f"unreadable labels file {f.name}: {exc}") from exc
            missing = [c for c in LABEL_COLUMNS if c not in schema.names]
            if missing:
                raise LabelsDataError(f"labels file {f.name}: required column(s) missing: {', '.join(missing)}")
            table = pq.read_table(path, columns=list(LABEL_COLUMNS))
        frames.append(conform_labels(table.to_pandas(), source=f.name))
    return latest_labels(frames, [f.name for f in files], day=day, now=now)


def synthetic_label_schedule(day: dt.date, rows: int, seed: int) -> pd.DataFrame:
    """Every transaction of the synthetic day with its truth and when that truth becomes known (NaT: never).

    Ids and truth are the synthetic landing zone's own (`generate_day` with the same rows and seed); the delay
    is drawn from its own stream of the same seed and day, so the schedule is the same in every process.
    """
    transactions = generate_day(day, rows, seed=seed)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, day.toordinal(), _LABELS_STREAM])))
    n = len(transactions)
    delay_days = np.minimum(rng.lognormal(np.log(MEDIAN_DELAY_DAYS), DELAY_SIGMA, n), MAX_DELAY_DAYS)
    never = rng.random(n) < NEVER_LABELLED_SHARE
    delay = pd.to_timedelta(np.round(delay_days * 86_400e6).astype(np.int64), unit="us")
    labelled_at = (transactions["event_time"] + delay).astype("datetime64[us, UTC]")
    labelled_at[never] = pd.NaT
    return pd.DataFrame(
        {
            "transaction_id": transactions["transaction_id"],
            "is_fraud": transactions[LABEL_COLUMN].astype(np.int8),
            "labelled_at": labelled_at,
        }
    )


def released_by(schedule: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """The labels of a schedule known at `now`."""
    return schedule[schedule["labelled_at"].notna() & (schedule["labelled_at"] <= now)].reset_index(drop=True)

