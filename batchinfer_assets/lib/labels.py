"""Delayed labels: reading a day's label files, keeping the latest label per id, and releasing a synthetic schedule.

A labels file holds the domain's id column, its 0/1 label column and `labelled_at`; the functions here take the
two column names, so they serve any domain. Labels for a day keep arriving for weeks, as new files in the day's
folder. A later label for the same id replaces an earlier one (a chargeback reversed, a case confirmed); the latest
`labelled_at` wins. What was superseded is counted, never silently dropped: `duplicates` (label rows beyond the one
kept per id) and `contradictory` (ids labelled both 0 and 1), so a feed that suddenly flips many labels shows in the
metadata.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batchinfer_assets.lib.landing import DayFile, LandingDataError, day_files

LABELLED_AT = "labelled_at"

# How far a label's `labelled_at` may lie ahead of this clock (the labelling system's clock may run a little fast);
# beyond it the time is wrong, and a label dated years ahead would win over every real label of its id for good.
CLOCK_SKEW = pd.Timedelta(minutes=5)


class LabelsDataError(LandingDataError):
    """A label file of a day cannot be used: that day's evaluation stops, naming the file and the column.

    A `LandingDataError` because it is one (bad data landed by an upstream system): the pipeline stops the
    day and goes on with the others, and the step is not retried.
    """


def label_columns(id_column: str, label_column: str) -> tuple[str, str, str]:
    """The columns of a labels file, for a domain's id and label columns."""
    return (id_column, label_column, LABELLED_AT)


@dataclass(frozen=True)
class DayLabels:
    """The labels known for one day: one row per id, and what was superseded on the way."""

    labels: pd.DataFrame  # {id_column} (string), {label_column} (int8), labelled_at (timestamp, UTC)
    rows_read: int
    duplicates: int
    contradictory: int
    sources: tuple[str, ...]
    id_column: str
    label_column: str
    # Label rows ignored as impossible: dated after now (beyond CLOCK_SKEW), or before their row's day began.
    future: int = 0
    before_day: int = 0

    @property
    def latest_labelled_at(self) -> pd.Timestamp | None:
        """When the newest label known for the day was given: how fresh the day's labels are."""
        return None if self.labels.empty else self.labels[LABELLED_AT].max()


def empty_labels(id_column: str, label_column: str) -> pd.DataFrame:
    """A labels frame with no rows and the conformed types."""
    return pd.DataFrame(
        {
            id_column: pd.array([], dtype="string"),
            label_column: np.array([], dtype=np.int8),
            LABELLED_AT: pd.Series([], dtype="datetime64[us, UTC]"),
        }
    )


def labels_schema(id_column: str, label_column: str) -> pa.Schema:
    """A day's conformed labels as Arrow."""
    return pa.schema([(id_column, pa.string()), (label_column, pa.int8()), (LABELLED_AT, pa.timestamp("us", tz="UTC"))])


def labels_arrow(frame: pd.DataFrame, id_column: str, label_column: str) -> pa.Table:
    """Conformed labels (`conform_labels`) as Arrow, in `labels_schema`."""
    return pa.table(
        {
            id_column: pa.array(frame[id_column], pa.string()),
            label_column: pa.array(frame[label_column].to_numpy(dtype=np.int8)),
            LABELLED_AT: pa.array(frame[LABELLED_AT].dt.tz_convert(None).to_numpy("datetime64[us]"), pa.timestamp("us", tz="UTC")),
        },
        schema=labels_schema(id_column, label_column),
    )


def labels_table(known: DayLabels) -> pa.Table:
    """A day's conformed labels as Arrow, e.g. to hash what a day's evaluation saw."""
    return labels_arrow(known.labels, known.id_column, known.label_column)


def implausible(labelled_at: pd.Series, day: dt.date | None, now: pd.Timestamp | None) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the labels dated after `now` (beyond CLOCK_SKEW) and of those dated before `day` began (None: no limit)."""
    future = (labelled_at > now + CLOCK_SKEW).to_numpy() if now is not None else np.zeros(len(labelled_at), dtype=bool)
    early = (labelled_at < pd.Timestamp(day, tz="UTC")).to_numpy() if day is not None else np.zeros(len(labelled_at), dtype=bool)
    return future, early


def conform_labels(frame: pd.DataFrame, source: str, *, id_column: str, label_column: str) -> pd.DataFrame:
    """The label columns in their types, or an error naming the source and the offending column."""
    columns = label_columns(id_column, label_column)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LabelsDataError(f"labels file {source}: required column(s) missing: {', '.join(missing)}")
    for column in columns:
        if frame[column].isna().any():
            raise LabelsDataError(f"labels file {source}: column {column!r} has {int(frame[column].isna().sum())} null value(s)")
    label = frame[label_column]
    if pd.api.types.is_bool_dtype(label):
        label = label.astype(np.int8)
    elif not pd.api.types.is_numeric_dtype(label) or not label.isin([0, 1]).all():
        bad = label[~label.isin([0, 1])].tolist()[0] if pd.api.types.is_numeric_dtype(label) else label.dtype
        raise LabelsDataError(f"labels file {source}: column {label_column!r} must hold 0 or 1, found {bad!r}")
    labelled_at = _labelled_at_utc(frame, source)
    return pd.DataFrame(
        {
            id_column: frame[id_column].astype("string"),
            label_column: label.astype(np.int8),
            LABELLED_AT: labelled_at.astype("datetime64[us, UTC]"),
        }
    ).reset_index(drop=True)


def _labelled_at_utc(frame: pd.DataFrame, source: str) -> pd.Series:
    labelled_at = frame[LABELLED_AT]
    if not pd.api.types.is_datetime64_any_dtype(labelled_at):
        raise LabelsDataError(f"labels file {source}: column 'labelled_at' must be a timestamp, found {labelled_at.dtype}")
    # A timestamp without a zone is read as UTC, the contract's zone.
    return labelled_at.dt.tz_localize("UTC") if labelled_at.dt.tz is None else labelled_at.dt.tz_convert("UTC")


def latest_labels(
    frames: Sequence[pd.DataFrame],
    sources: Sequence[str],
    *,
    id_column: str,
    label_column: str,
    day: dt.date | None = None,
    now: pd.Timestamp | None = None,
) -> DayLabels:
    """One label per id, the latest by `labelled_at` (on equal times, the later file), with what was superseded.

    `frames` are conformed (`conform_labels`) with the same id and label columns. With `now`, labels dated after
    it (beyond CLOCK_SKEW) are ignored; with `day` (the rows' day), labels dated before that day began. Both are
    counted, and dropped before the latest is chosen, so such a label never hides a real one.
    """
    names = {"id_column": id_column, "label_column": label_column}
    frames = [f for f in frames if not f.empty]
    if not frames:
        empty = empty_labels(id_column, label_column)
        return DayLabels(empty, rows_read=0, duplicates=0, contradictory=0, sources=tuple(sources), **names)
    stacked = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    rows_read = len(stacked)
    future, early = implausible(stacked[LABELLED_AT], day, now)
    if future.any() or early.any():
        stacked = stacked[~(future | early)].reset_index(drop=True)
    # A stable sort keeps file order among equal times, so the later file wins a tie.
    ordered = stacked.sort_values(LABELLED_AT, kind="stable")
    kept = ordered.drop_duplicates(id_column, keep="last")
    duplicates = len(stacked) - len(kept)
    contradictory = 0
    if duplicates:
        repeated = stacked[stacked[id_column].duplicated(keep=False)]
        contradictory = int((repeated.groupby(id_column, sort=False)[label_column].nunique() > 1).sum())
    return DayLabels(
        labels=kept.sort_values(id_column, kind="stable").reset_index(drop=True),
        rows_read=rows_read,
        duplicates=duplicates,
        contradictory=contradictory,
        sources=tuple(sources),
        **names,
        future=int(future.sum()),
        before_day=int((early & ~future).sum()),
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


def read_label_pieces(
    files: Sequence[DayFile], *, id_column: str, label_column: str, batch_rows: int = 1 << 20
) -> Iterator[tuple[str, pd.DataFrame]]:
    """(file name, conformed labels) for every batch of at most `batch_rows` rows of each label file, in file order
    (a file with no rows gives one empty piece): a day's labels read without holding more than a batch."""
    columns = label_columns(id_column, label_column)
    for f in files:
        with f.open() as path:
            try:
                parquet = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as exc:
                raise LabelsDataError(f"unreadable labels file {f.name}: {exc}") from exc
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                raise LabelsDataError(f"labels file {f.name}: required column(s) missing: {', '.join(missing)}")
            if parquet.metadata.num_rows == 0:
                yield f.name, conform_labels(parquet.schema_arrow.empty_table().select(list(columns)).to_pandas(), f.name, id_column=id_column, label_column=label_column)
                continue
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(columns)):
                yield f.name, conform_labels(batch.to_pandas(), source=f.name, id_column=id_column, label_column=label_column)


def read_label_files(
    files: Sequence[DayFile], *, id_column: str, label_column: str, day: dt.date | None = None, now: pd.Timestamp | None = None
) -> DayLabels:
    """Every label file of a day, checked and reduced to the latest plausible label per id (see `latest_labels`)."""
    frames = [frame for _, frame in read_label_pieces(files, id_column=id_column, label_column=label_column)]
    return latest_labels(frames, [f.name for f in files], id_column=id_column, label_column=label_column, day=day, now=now)


def released_by(schedule: pd.DataFrame, now: pd.Timestamp, source: str) -> pd.DataFrame:
    """The labels of a schedule (`labelled_at` NaT: never) known at `now`, a time with a zone."""
    if LABELLED_AT not in schedule.columns:
        raise LabelsDataError(f"labels file {source}: required column(s) missing: {LABELLED_AT}")
    labelled_at = _labelled_at_utc(schedule, source)
    return schedule[labelled_at.notna() & (labelled_at <= now)].reset_index(drop=True)

