"""Reading one day of the landing zone and conforming it to the contract's columns and types."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batchinfer_assets.lib.parquet_store import S3Backend, is_s3_uri, split_s3_uri

class LandingDataError(ValueError):
    """The landing data of a day cannot be used at all (as opposed to individual bad rows)."""


def pandas_dtype(column: str, type_: pa.DataType) -> str:
    """The pandas dtype a landing column of Arrow type `type_` is read into."""
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    if pa.types.is_timestamp(type_):
        return "datetime64[us, UTC]"
    if pa.types.is_floating(type_):
        return "float64"
    if pa.types.is_integer(type_):
        return "Int64"
    if pa.types.is_boolean(type_):
        return "boolean"
    raise ValueError(f"landing column {column!r}: type {type_} is not supported (string, timestamp, float, integer, boolean)")


def conform_landing_frame(frame: pd.DataFrame, source: str, columns: Mapping[str, pa.DataType]) -> pd.DataFrame:
    """The domain's landing `columns` in declaration order and types, or an error naming what is wrong."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LandingDataError(f"{source}: required column(s) missing: {', '.join(missing)}")
    out = {}
    for column, type_ in columns.items():
        dtype = pandas_dtype(column, type_)
        try:
            out[column] = _cast(frame[column], dtype)
        except (TypeError, ValueError, OverflowError, pa.ArrowException) as exc:
            raise LandingDataError(
                f"{source}: column {column!r} of type {frame[column].dtype} cannot be cast to {dtype}: {exc}"
            ) from exc
    return pd.DataFrame(out).reset_index(drop=True)


def _cast(series: pd.Series, dtype: str) -> pd.Series:
    if dtype in ("Int64", "boolean"):
        return _cast_number(series, dtype)
    if dtype.startswith("datetime64"):
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise TypeError("numbers are not timestamps")
        if not pd.api.types.is_datetime64_any_dtype(series):
            # A date reads as midnight and text is parsed by guesswork: both would invent a time of day.
            kind = pd.api.types.infer_dtype(series, skipna=True)
            if kind == "empty":
                return pd.Series(pd.NaT, index=series.index, dtype=dtype)
            first = series.dropna()
            example = f" (e.g. {first.iloc[0]!r})" if len(first) else ""
            what = {"date": "dates without a time of day", "string": "text"}.get(kind, f"{kind} values")
            raise TypeError(f"the values are {what}{example}; write a timestamp column (UTC, or naive meaning UTC)")
        values = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
        return values.astype(dtype)
    if dtype == "float64":
        if pd.api.types.is_bool_dtype(series):
            raise TypeError("booleans are not amounts")
        if pd.api.types.is_numeric_dtype(series) or series.isna().all():
            return series.astype("float64")
        if series.dtype == object:
            # Parquet DECIMAL columns (what Spark, Athena and databases write for money) arrive as Decimal objects.
            numbers = pd.to_numeric(series, errors="coerce")
            bad = series[numbers.isna() & series.notna()]
            if bad.empty:
                return numbers.astype("float64")
            raise TypeError(f"{len(bad)} value(s) are not numbers, e.g. {bad.iloc[0]!r} at row {bad.index[0]}")
        if pd.api.types.is_string_dtype(series):
            first = series.dropna()
            example = f" (e.g. {first.iloc[0]!r})" if len(first) else ""
            raise TypeError(f"the values are text{example}; write a float64 or DECIMAL column")
        raise TypeError(f"expected numbers, found {series.dtype}")
    # Arrow dictionary-encoded text arrives as a categorical: its categories are the values.
    values = series.cat.categories if isinstance(series.dtype, pd.CategoricalDtype) else series
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("string", "empty"):
        return series.astype(dtype)
    # Bytes, numbers or dates turned into text would publish "b'...'" or "12.0" as if an upstream system wrote it.
    raise TypeError(f"expected text, found {series.dtype} holding {kind} values")


def _cast_number(series: pd.Series, dtype: str) -> pd.Series:
    """Integers (nullable Int64) or booleans (nullable boolean): only casts that lose nothing."""
    if dtype == "boolean":
        if pd.api.types.is_bool_dtype(series) or series.isna().all():
            return series.astype("boolean")
        raise TypeError(f"expected booleans, found {series.dtype}")
    if pd.api.types.is_bool_dtype(series):
        raise TypeError("booleans are not integers")
    if pd.api.types.is_integer_dtype(series) or series.isna().all():
        return series.astype("Int64")
    if pd.api.types.is_float_dtype(series):
        whole = series.dropna()
        if (whole == whole.round()).all() and (whole.abs() < 2**53).all():
            return series.astype("Int64")
        raise TypeError("the values have fractions; write an integer column")
    raise TypeError(f"expected integers, found {series.dtype}")


def is_bookkeeping(relative_name: str) -> bool:
    """Whether a file in a landing day is a writer's bookkeeping, not data.

    Writers name their data files differently (Spark `part-00000-<uuid>.c000.snappy.parquet`, Hive `000000_0`,
    Athena UNLOAD `<query id>_<n>` without an extension, hand uploads `.PARQUET` or `.parq`), so every file is
    read as Parquet except what some writer marks as its own: a name (or folder) starting with `_` or `.`
    (`_SUCCESS`, `_committed_*`, `.part-0.crc`, `.hive-staging*`) and UNLOAD/Redshift manifests. A data file that
    is not Parquet fails the day naming it; nothing is skipped quietly.
    """
    parts = relative_name.split("/")
    if any(part.startswith(("_", ".")) for part in parts):
        return True
    name = parts[-1].lower()
    return name.endswith(("manifest", "manifest.csv", "manifest.json")) or name.endswith(".crc")


@dataclass(frozen=True)
class DayFile:
    """One data file of a day's folder: its name, what identifies its content, and how to get a local path to it."""

    name: str
    size: int
    modified: str
    open: Callable[[], contextlib.AbstractContextManager[Any]]


def day_files(root: str | Path, day: dt.date, s3_client: Any = None) -> tuple[str, bool, list[DayFile]]:
    """`{root}/dt={day}/` (a local folder or an S3 prefix): its location, whether it exists, and its data files by name.

    Every file below the day is data except writers' bookkeeping (`is_bookkeeping`): the landing zone and the labels
    zone both find their files here, so a file one of them reads is never silently skipped by the other.
    """
    return (_s3_day if is_s3_uri(str(root)) else _local_day)(str(root), day, s3_client)


def read_landing_day(
    root: str | Path, day: dt.date, columns: Mapping[str, pa.DataType], s3_client: Any = None
) -> pd.DataFrame:
    """All Parquet files of `{root}/dt={day}/` (a local folder or an S3 prefix), concatenated and conformed to `columns`."""
    frames = list(iter_landing_day(root, day, columns, s3_client))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def iter_landing_day(
    root: str | Path, day: dt.date, columns: Mapping[str, pa.DataType], s3_client: Any = None, batch_rows: int | None = None
) -> Iterator[pd.DataFrame]:
    """The rows of `{root}/dt={day}/` file by file, conformed to `columns`; a file of more than `batch_rows` rows in
    pieces of at most that many (None: each file whole)."""
    folder, exists, files = day_files(root, day, s3_client)
    if not exists:
        raise LandingDataError(f"no landing data for {day.isoformat()}: folder {folder} does not exist")
    if not files:
        raise LandingDataError(f"no landing data for {day.isoformat()}: no data files in {folder} (only writers' bookkeeping files)")
    for file in files:
        # Opening (an S3 download) stays outside the try: a connection failure is transient, not bad data.
        with file.open() as path:
            pieces = _read_pieces(file.name, path, [c for c in columns], batch_rows)
            for piece in pieces:
                yield conform_landing_frame(piece.to_pandas(), source=file.name, columns=columns)


def _read_pieces(name: str, path: Any, columns: list[str], batch_rows: int | None) -> Iterator[pa.Table | pa.RecordBatch]:
    """The file's declared columns: whole, or in pieces of `batch_rows` when it has more; unreadable: LandingDataError."""
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)
        present = set(parquet.schema_arrow.names)
        # Only the declared columns are read: other columns of the export are ignored anyway.
        wanted = [c for c in columns if c in present]
        if batch_rows is None or parquet.metadata.num_rows <= batch_rows:
            yield parquet.read(columns=wanted)
            return
        batches = parquet.iter_batches(batch_size=batch_rows, columns=wanted)
        while True:
            batch = next(batches, None)
            if batch is None:
                return
            yield batch
    except (pa.ArrowException, OSError) as exc:
        raise LandingDataError(
            f"landing file {name} is not a readable Parquet file ({exc}); every file of a landing day is read "
            "except writers' bookkeeping (names starting with _ or ., manifests): remove or move it"
        ) from exc


def _local_day(root: str, day: dt.date, _client: Any) -> tuple[str, bool, list[DayFile]]:
    folder = Path(root.removeprefix("file://")) / f"dt={day.isoformat()}"
    if not folder.is_dir():
        return str(folder), False, []
    # Nested folders too: Spark's partitionBy writes `hour=01/part-...` under the day.
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not is_bookkeeping(p.relative_to(folder).as_posix()))
    files = []
    for path in paths:
        stat = path.stat()
        files.append(DayFile(str(path), stat.st_size, str(stat.st_mtime_ns), lambda p=path: contextlib.nullcontext(p)))
    return str(folder), True, files


def _s3_day(root: str, day: dt.date, client: Any) -> tuple[str, bool, list[DayFile]]:
    if client is None:
        raise ValueError(f"URI {root!r} is on S3 but no S3 client was given")
    backend = S3Backend(client, *split_s3_uri(root))
    prefix = backend.key(f"dt={day.isoformat()}") + "/"
    folder = f"s3://{backend.bucket}/{prefix}"
    objects = backend.objects_under(prefix)
    if not objects:
        return folder, False, []
    files = []
    for item in sorted(objects, key=lambda o: o["Key"]):
        key = item["Key"]
        # Keys ending in "/" are console-made folder markers (zero bytes), not files.
        if key.endswith("/") or is_bookkeeping(key[len(prefix):]):
            continue
        modified = f"{item['LastModified'].isoformat()}/{item.get('ETag', '')}"
        files.append(DayFile(f"s3://{backend.bucket}/{key}", int(item.get("Size", 0)), modified, lambda key=key: backend.open_part(key)))
    return folder, True, files
