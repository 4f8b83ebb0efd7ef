"""Reading one day of the landing zone and conforming it to the contract's columns and types."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batchinfer_assets.lib.parquet_store import S3Backend, is_s3_uri, split_s3_uri

# The contract's landing columns and the pandas dtype each is cast to; extra columns are dropped.
LANDING_DTYPES: dict[str, str] = {
    "transaction_id": "string",
    "event_time": "datetime64[us, UTC]",
    "customer_id": "string",
    "merchant_category": "string",
    "amount": "float64",
    "currency": "string",
    "channel": "string",
    "country": "string",
}


class LandingDataError(ValueError):
    """The landing data of a day cannot be used at all (as opposed to individual bad rows)."""


def conform_landing_frame(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The contract's columns in contract order and types, or an error naming what is wrong."""
    missing = [c for c in LANDING_DTYPES if c not in frame.columns]
    if missing:
        raise LandingDataError(f"{source}: required column(s) missing: {', '.join(missing)}")
    out = {}
    for column, dtype in LANDING_DTYPES.items():
        try:
            out[column] = _cast(frame[column], dtype)
        except (TypeError, ValueError, OverflowError, pa.ArrowException) as exc:
            raise LandingDataError(
                f"{source}: column {column!r} of type {frame[column].dtype} cannot be cast to {dtype}: {exc}"
            ) from exc
    return pd.DataFrame(out).reset_index(drop=True)


def _cast(series: pd.Series, dtype: str) -> pd.Series:
    if dtype.startswith("datetime64"):
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise TypeError("numbers are not timestamps")
        values = pd.to_datetime(series, utc=True, errors="raise")
        return values.astype(dtype)
    if dtype == "float64":
        if not (pd.api.types.is_numeric_dtype(series) or series.isna().all()) or pd.api.types.is_bool_dtype(series):
            raise TypeError("not numeric")
        return series.astype("float64")
    if pd.api.types.is_string_dtype(series) or series.dtype == object:
        return series.astype(dtype)
    raise TypeError(f"expected text, found {series.dtype}")


def read_landing_day(root: str | Path, day: dt.date, s3_client: Any = None) -> pd.DataFrame:
    """All Parquet files of `{root}/dt={day}/` (a local folder or an S3 prefix), concatenated and conformed."""
    folder, exists, files = (_s3_day if is_s3_uri(str(root)) else _local_day)(str(root), day, s3_client)
    if not exists:
        raise LandingDataError(f"no landing data for {day.isoformat()}: folder {folder} does not exist")
    if not files:
        raise LandingDataError(f"no landing data for {day.isoformat()}: no *.parquet files in {folder}")
    frames = []
    for name, open_file in files:
        # Opening (an S3 download) stays outside the try: a connection failure is transient, not bad data.
        with open_file() as path:
            try:
                table = pq.read_table(path)
            except (pa.ArrowException, OSError) as exc:
                raise LandingDataError(f"unreadable landing file {name}: {exc}") from exc
        frames.append(conform_landing_frame(table.to_pandas(), source=name))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


LandingFiles = tuple[str, bool, list[tuple[str, Callable[[], contextlib.AbstractContextManager[Any]]]]]


def _local_day(root: str, day: dt.date, _client: Any) -> LandingFiles:
    folder = Path(root.removeprefix("file://")) / f"dt={day.isoformat()}"
    if not folder.is_dir():
        return str(folder), False, []
    files = sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith((".", "_")))
    return str(folder), True, [(str(p), lambda p=p: contextlib.nullcontext(p)) for p in files]


def _s3_day(root: str, day: dt.date, client: Any) -> LandingFiles:
    if client is None:
        raise ValueError(f"landing URI {root!r} is on S3 but no S3 client was given")
    backend = S3Backend(client, *split_s3_uri(root))
    prefix = backend.key(f"dt={day.isoformat()}") + "/"
    folder = f"s3://{backend.bucket}/{prefix}"
    if not backend.keys_under(prefix):
        return folder, False, []
    return folder, True, [
        (f"s3://{backend.bucket}/{key}", lambda key=key: backend.open_part(key)) for key in backend.data_keys(prefix)
    ]
