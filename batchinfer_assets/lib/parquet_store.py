"""Hive-style partitioned Parquet tables: `{base}/{table}/dt={YYYY-MM-DD}/part-*.parquet`, locally or on S3.

One store, two backends. Both fill a local spool folder through the same writer and publish it only
when it is complete, so a failed run never changes a day and readers never see a mix of old and new:
- local: the spool is a hidden staging folder (names starting with `_` are ignored by pyarrow.dataset,
  Spark, DuckDB and Athena) swapped in with one atomic exchange of folders (two renames where the
  system has none);
- S3, which has no rename: a day is exactly one object, `part-00000.parquet`, uploaded in one (multipart
  for big files) upload that S3 makes visible atomically on completion, replacing the previous object
  under the same key in one step; stale `*.parquet` keys of an older layout are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchinfer_assets.lib.redaction import redact

PARTITION_COLUMN = "dt"
STAGING_DIR = "_staging"
ROWS_PER_FILE = 2_000_000
ROW_GROUP_SIZE = 256 * 1024
# Bytes read from the end of an object for its footer: most footers fit, a bigger one takes a second read.
_FOOTER_GUESS_BYTES = 64 * 1024
S3_PART = "part-00000.parquet"
# S3 caps presigned URLs made with long-term credentials at 7 days.
SIDE_FILE_LINK_EXPIRY_S = 7 * 24 * 3600


class PartitionNotFoundError(FileNotFoundError):
    """A partition that was asked for has never been written."""


class StorageUnavailableError(ConnectionError):
    """The object store cannot be reached (possibly for a moment: retried)."""


class StorageCredentialsError(PermissionError):
    """No credentials for an S3 endpoint: a setting to fix, never cleared by retrying."""


class BucketNotFoundError(LookupError):
    """The configured bucket does not exist (the same on every try: not retried)."""


class PartitionBackend(ABC):
    """Where day folders live, and how a complete spool folder replaces one."""

    # The Hive-style name of each partition folder: `dt` for the daily tables.
    key_column: str = PARTITION_COLUMN

    @abstractmethod
    def location(self, *parts: str) -> str:
        """The URI or path of a table, a day or a file under the base."""

    @abstractmethod
    def rows_per_file(self) -> int:
        """Rows after which the writer starts a new file."""

    @abstractmethod
    def has_partition(self, table: str, dt: str) -> bool:
        """Whether the day has been written."""

    @abstractmethod
    def part_refs(self, table: str, dt: str) -> list[Any]:
        """The day's Parquet files in read order; PartitionNotFoundError when the day is absent."""

    @abstractmethod
    def open_part(self, ref: Any) -> contextlib.AbstractContextManager[str | Path]:
        """A local path pyarrow can read the file from, valid inside the context."""

    def read_metadata(self, ref: Any) -> pq.FileMetaData:
        """One file's Parquet footer (row count, schema, row groups)."""
        with self.open_part(ref) as path:
            return pq.read_metadata(path)

    @abstractmethod
    def replacing(self, table: str, dt: str) -> contextlib.AbstractContextManager[Path]:
        """A spool folder whose files replace the day's on success; nothing changes on failure."""

    @abstractmethod
    def delete_partition(self, table: str, dt: str) -> None:
        """Remove the day if present."""

    @abstractmethod
    def list_partitions(self, table: str) -> dict[str, float]:
        """Each partition of the table: its key (the folder's value) and when it was last written (epoch s)."""

    @abstractmethod
    def write_text(self, parts: tuple[str, ...], text: str) -> str:
        """Replace one small text file (readers see the old or the new one) and return its location."""

    def url_of(self, parts: tuple[str, ...], expires_s: int) -> str | None:
        """A link a browser can open for a file under the base, or None where the backend has none."""
        return None


class LocalBackend(PartitionBackend):
    """Day folders on a local file system, replaced in one atomic exchange of folders (Linux `renameat2`
    with `RENAME_EXCHANGE`), or with two renames where the system has no exchange."""

    def __init__(self, base: Path):
        self.base = base

    def location(self, *parts: str) -> str:
        return str(self.base.joinpath(*parts))

    def rows_per_file(self) -> int:
        return ROWS_PER_FILE

    def partition_dir(self, table: str, dt: str) -> Path:
        return self.base / table / f"{self.key_column}={dt}"

    def has_partition(self, table: str, dt: str) -> bool:
        self._restore_interrupted_swap(table, dt)
        return self.partition_dir(table, dt).is_dir()

    def part_refs(self, table: str, dt: str) -> list[Path]:
        self._restore_interrupted_swap(table, dt)
        folder = self.partition_dir(table, dt)
        if not folder.is_dir():
            raise PartitionNotFoundError(f"no partition {self.key_column}={dt} of table {table!r}: {folder} does not exist")
        return sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith((".", "_")))

    @contextlib.contextmanager
    def open_part(self, ref: Path) -> Iterator[Path]:
        yield ref

    @contextlib.contextmanager
    def replacing(self, table: str, dt: str) -> Iterator[Path]:
        self._restore_interrupted_swap(table, dt)
        table_dir = self.base / table
        staging_root = table_dir / STAGING_DIR
        self._remove_orphaned_staging(staging_root, dt)
        # Whose staging it is: a later writer of the day removes it once that process is gone (killed runs).
        token = f"{_HOST}.{os.getpid()}.{uuid.uuid4().hex}"
        staging = staging_root / f"{self.key_column}={dt}.{token}"
        staging.mkdir(parents=True, exist_ok=False)
        previous = staging_root / f"{self.key_column}={dt}.{token}.previous"
        try:
            yield staging
            _fsync_dir(staging)
            final = self.partition_dir(table, dt)
            if not final.exists():
                os.rename(staging, final)
            elif _exchange(staging, final):
                # The day's folder never goes missing: a reader reading the folder directly (DuckDB, Spark)
                # sees the old day or the new one. `staging` now holds the old day, removed below (or, if
                # this process dies first, by the next writer of the day once it sees this one gone).
                os.rename(staging, previous)
            else:
                # No exchange here: between these renames the day is only in `.previous`, which the store's
                # readers restore (`_restore_interrupted_swap`) if this process dies in between.
                os.rename(final, previous)
                os.rename(staging, final)
            _fsync_dir(table_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            # A table's first day that failed leaves no folder behind (rmdir removes only empty ones).
            for folder in (staging_root, table_dir):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        shutil.rmtree(previous, ignore_errors=True)

    def delete_partition(self, table: str, dt: str) -> None:
        shutil.rmtree(self.partition_dir(table, dt), ignore_errors=True)

    def list_partitions(self, table: str) -> dict[str, float]:
        folder = self.base / table
        prefix = f"{self.key_column}="
        if not folder.is_dir():
            return {}
        return {p.name[len(prefix):]: p.stat().st_mtime for p in folder.iterdir() if p.is_dir() and p.name.startswith(prefix)}

    def write_text(self, parts: tuple[str, ...], text: str) -> str:
        return str(replace_local_text(self.base.joinpath(*parts), text))

    def _remove_orphaned_staging(self, staging_root: Path, dt: str) -> None:
        """Remove the day's staging folders left by writers that died (SIGKILL, OOM) before their swap, and the
        replaced day of a swap whose writer died after both renames but before removing it."""
        if not staging_root.is_dir():
            return
        day_exists = (staging_root.parent / f"{self.key_column}={dt}").is_dir()
        for folder in staging_root.glob(f"{self.key_column}={dt}.*"):
            token = folder.name[len(f"{self.key_column}={dt}.") :]
            if token.endswith(".previous"):
                # Without the day's folder it is the last good day (restored by _restore_interrupted_swap, which
                # runs first); with it, the swap completed and this is the old copy, garbage once its writer is gone.
                if not day_exists:
                    continue
                token = token.removesuffix(".previous")
            if _is_orphaned(token, folder):
                shutil.rmtree(folder, ignore_errors=True)

    def _restore_interrupted_swap(self, table: str, dt: str) -> None:
        # A process killed between the two renames of a swap leaves the day only in `.previous`.
        final = self.partition_dir(table, dt)
        if final.exists():
            return
        staging_root = self.base / table / STAGING_DIR
        if not staging_root.is_dir():
            return
        leftovers = sorted(staging_root.glob(f"{self.key_column}={dt}.*.previous"), key=lambda p: p.stat().st_mtime)
        if leftovers:
            os.rename(leftovers[-1], final)


class S3Backend(PartitionBackend):
    """Day prefixes in an S3 bucket, each day one object replaced by a single upload.

    `client` is a boto3 S3 client (built by dagster-aws's S3Resource, with botocore's retries for
    throttling and transient errors); its errors are turned into ones naming the endpoint and bucket.
    """

    def __init__(self, client: Any, bucket: str, prefix: str, spool_dir: str | None = None):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.spool_dir = spool_dir

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def location(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"

    def rows_per_file(self) -> int:
        # One object per day: a day's replacement is then a single atomic PUT.
        return 2**62

    def day_prefix(self, table: str, dt: str) -> str:
        return self.key(table, f"{self.key_column}={dt}") + "/"

    def has_partition(self, table: str, dt: str) -> bool:
        return bool(self.data_keys(self.day_prefix(table, dt)))

    def part_refs(self, table: str, dt: str) -> list[str]:
        keys = self.data_keys(self.day_prefix(table, dt))
        if not keys:
            raise PartitionNotFoundError(
                f"no partition {self.key_column}={dt} of table {table!r}: no *.parquet objects under {self.location(table, f'{self.key_column}={dt}')}/"
            )
        return keys

    @contextlib.contextmanager
    def open_part(self, ref: str) -> Iterator[Path]:
        # A local copy keeps reads in bounded memory and lets pyarrow seek freely (footer first).
        with tempfile.TemporaryDirectory(prefix="batchinfer-s3-", dir=self.spool_dir) as folder:
            path = Path(folder) / "part.parquet"
            with open(path, "wb") as sink:
                self._call(f"download s3://{self.bucket}/{ref}", self.client.download_fileobj, self.bucket, ref, sink)
            yield path

    def read_metadata(self, ref: str) -> pq.FileMetaData:
        # The footer alone, by ranged reads of the object's last bytes: counting a day's rows or reading its schema
        # does not download its files.
        tail = self._tail(ref, _FOOTER_GUESS_BYTES)
        size = int.from_bytes(tail[-8:-4], "little") + 8 if len(tail) >= 8 and tail[-4:] == b"PAR1" else 0
        if size > len(tail):
            tail = self._tail(ref, size)
        try:
            return pq.read_metadata(pa.BufferReader(tail[-size:] if size else tail))
        except pa.ArrowException as exc:
            raise pa.ArrowInvalid(f"s3://{self.bucket}/{ref} is not a Parquet file: {exc}") from exc

    def _tail(self, ref: str, size: int) -> bytes:
        what = f"read the footer of s3://{self.bucket}/{ref}"
        response = self._call(what, self.client.get_object, Bucket=self.bucket, Key=ref, Range=f"bytes=-{size}")
        return self._call(what, response["Body"].read)

    @contextlib.contextmanager
    def replacing(self, table: str, dt: str) -> Iterator[Path]:
        prefix = self.day_prefix(table, dt)
        # Listing first fails fast on a missing bucket or unreachable endpoint, before any work is done.
        self.data_keys(prefix)
        with tempfile.TemporaryDirectory(prefix="batchinfer-s3-spool-", dir=self.spool_dir) as folder:
            spool = Path(folder)
            yield spool
            files = sorted(spool.glob("*.parquet"))
            if [f.name for f in files] != [S3_PART]:
                raise RuntimeError(f"expected exactly one spooled file {S3_PART} for {prefix}, found {[f.name for f in files]}")
            key = prefix + S3_PART
            self._call(f"upload s3://{self.bucket}/{key}", self.client.upload_file, str(files[0]), self.bucket, key)
        stale = [k for k in self.data_keys(prefix) if k != key]
        if stale:
            self._call(
                f"delete stale objects under s3://{self.bucket}/{prefix}",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in stale], "Quiet": True},
            )

    def delete_partition(self, table: str, dt: str) -> None:
        keys = self.keys_under(self.day_prefix(table, dt))
        if keys:
            self._call(
                f"delete s3://{self.bucket}/{self.day_prefix(table, dt)}",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )

    def write_text(self, parts: tuple[str, ...], text: str) -> str:
        key = self.key(*parts)
        content_type = "text/html; charset=utf-8" if key.endswith(".html") else "text/plain; charset=utf-8"
        self._call(
            f"upload s3://{self.bucket}/{key}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=text.encode("utf-8"),
            ContentType=content_type,
        )
        return self.location(*parts)

    def url_of(self, parts: tuple[str, ...], expires_s: int) -> str | None:
        # A presigned GET: anyone holding the link can read that one object until it expires; it carries the
        # access key id and a signature, never the secret key.
        return self._call(
            f"presign s3://{self.bucket}/{self.key(*parts)}",
            self.client.generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(*parts)},
            ExpiresIn=expires_s,
        )

    def data_keys(self, prefix: str) -> list[str]:
        """The `*.parquet` keys directly under a prefix ending in `/`, sorted."""
        return sorted(k for k in self.keys_under(prefix) if _is_data_file(k.rsplit("/", 1)[-1]) and "/" not in k[len(prefix):])

    def keys_under(self, prefix: str) -> list[str]:
        """Every key starting with the prefix."""
        return [item["Key"] for item in self.objects_under(prefix)]

    def objects_under(self, prefix: str) -> list[dict[str, Any]]:
        """Every object (Key, LastModified, ...) whose key starts with the prefix."""
        objects: list[dict[str, Any]] = []
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self._call(f"list s3://{self.bucket}/{prefix}", self.client.list_objects_v2, **kwargs)
            objects.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                return objects
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def list_partitions(self, table: str) -> dict[str, float]:
        table_prefix = self.key(table) + "/"
        found: dict[str, float] = {}
        for item in self.objects_under(table_prefix + f"{self.key_column}="):
            folder, _, name = item["Key"][len(table_prefix):].partition("/")
            if _is_data_file(name):
                key = folder.removeprefix(f"{self.key_column}=")
                found[key] = max(found.get(key, 0.0), item["LastModified"].timestamp())
        return found

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import boto3.exceptions
        import botocore.exceptions

        try:
            return fn(*args, **kwargs)
        except botocore.exceptions.NoCredentialsError as exc:
            raise StorageCredentialsError(
                f"no AWS credentials to {what} at the S3 endpoint {redact(self.endpoint)} (bucket {self.bucket!r}): set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or an instance/pod role"
            ) from exc
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            raise StorageUnavailableError(
                redact(f"cannot reach the S3 endpoint {self.endpoint} (bucket {self.bucket!r}) to {what}: {exc}")
            ) from exc
        except (botocore.exceptions.ClientError, boto3.exceptions.S3UploadFailedError) as exc:
            if "NoSuchBucket" in str(exc) or _error_code(exc) == "NoSuchBucket":
                raise BucketNotFoundError(
                    f"bucket {self.bucket!r} does not exist at the S3 endpoint {redact(self.endpoint)} (while trying to {what}); "
                    "create it or fix the s3:// URI"
                ) from exc
            raise


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
# A staging folder whose owner cannot be told alive or dead (another host, an older naming) is removed this old.
_ORPHAN_AGE_S = 24 * 3600


def _is_orphaned(token: str, folder: Path) -> bool:
    """Whether the process that owns a staging folder (token `host.pid.uuid`) is gone."""
    parts = token.split(".")
    if len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit():
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False
    try:
        return time.time() - folder.stat().st_mtime > _ORPHAN_AGE_S
    except FileNotFoundError:
        return False


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _is_data_file(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/prefix` as (bucket, prefix); an error naming the URI when it has no bucket."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI {uri!r} names no bucket; expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


def is_s3_uri(uri: str | os.PathLike[str]) -> bool:
    """Whether the URI points into S3."""
    return str(uri).startswith("s3://")


class PartitionedParquetStore:
    """Reads and atomically replaces daily partitions of Parquet tables under one base, local or S3."""

    def __init__(
        self,
        base_uri: str | os.PathLike[str],
        s3_client: Any = None,
        spool_dir: str | None = None,
        key_column: str = PARTITION_COLUMN,
    ):
        base = str(base_uri)
        self.uri = base
        self._s3_client = s3_client
        self._spool_dir = spool_dir
        if is_s3_uri(base):
            if s3_client is None:
                raise ValueError(f"storage URI {base!r} is on S3 but no S3 client was given")
            bucket, prefix = split_s3_uri(base)
            self.backend: PartitionBackend = S3Backend(s3_client, bucket, prefix, spool_dir)
        elif "://" in base and not base.startswith("file://"):
            raise ValueError(f"storage URI {base!r} is neither a local path nor s3://bucket/prefix")
        else:
            self.backend = LocalBackend(Path(base.removeprefix("file://")).absolute())
        self.backend.key_column = key_column

    def keyed_by(self, key_column: str) -> PartitionedParquetStore:
        """The same base and client, with partition folders named `{key_column}=...` (e.g. a content hash)."""
        return PartitionedParquetStore(self.uri, self._s3_client, self._spool_dir, key_column=key_column)

    def under(self, *parts: str) -> PartitionedParquetStore:
        """The same client and layout, based in a folder under this base (e.g. one reproduction's own tables)."""
        return PartitionedParquetStore(self.backend.location(*parts), self._s3_client, self._spool_dir, key_column=self.backend.key_column)

    @property
    def base(self) -> Path:
        """The local base folder (local stores only)."""
        if not isinstance(self.backend, LocalBackend):
            raise TypeError(f"{self.uri} is not a local folder")
        return self.backend.base

    def table_dir(self, table: str) -> Path:
        """The folder of one table (local stores only)."""
        return self.base / table

    def partition_dir(self, table: str, dt: str) -> Path:
        """The folder of one day of one table (local stores only)."""
        return self.table_dir(table) / f"{self.backend.key_column}={dt}"

    def table_uri(self, table: str) -> str:
        """Where one table lives: a path or an s3:// URI."""
        return self.backend.location(table)

    def partition_uri(self, table: str, dt: str) -> str:
        """Where one day of one table lives: a path or an s3:// URI."""
        return self.backend.location(table, f"{self.backend.key_column}={dt}")

    def has_partition(self, table: str, dt: str) -> bool:
        """Whether the day has been written."""
        return self.backend.has_partition(table, dt)

    def partition_files(self, table: str, dt: str) -> list[Any]:
        """The day's Parquet files in read order (paths locally, object keys on S3)."""
        return self.backend.part_refs(table, dt)

    def files_sha256(self, table: str, dt: str) -> dict[str, str]:
        """The sha256 of each of the day's files, by file name (what a byte-for-byte comparison compares)."""
        digests = {}
        for ref in self.partition_files(table, dt):
            with self.backend.open_part(ref) as path:
                digests[Path(str(ref)).name] = file_sha256(Path(path))
        return digests

    def read_partition(self, table: str, dt: str, columns: Iterable[str] | None = None) -> pa.Table:
        """The whole day as one Arrow table (an empty day keeps its schema)."""
        cols = list(columns) if columns is not None else None
        tables = []
        for ref in self.partition_files(table, dt):
            with self.backend.open_part(ref) as path:
                tables.append(pq.read_table(path, columns=cols))
        if len(tables) == 1:
            return tables[0]
        return pa.concat_tables(tables)

    def iter_batches(
        self, table: str, dt: str, batch_size: int, columns: Iterable[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The day as a stream of record batches, so memory stays bounded by the batch size."""
        cols = list(columns) if columns is not None else None
        for ref in self.partition_files(table, dt):
            with self.backend.open_part(ref) as path:
                # Without pre-buffering the reader holds one row group at a time: peak memory then stays
                # flat as days grow (with it, 1M rows peaked about 260 MiB above baseline, 5M rows 385 MiB).
                with pq.ParquetFile(path, pre_buffer=False) as pf:
                    yield from pf.iter_batches(batch_size=batch_size, columns=cols)

    def row_count(self, table: str, dt: str) -> int:
        """Rows of the day, from the Parquet footers."""
        return sum(self.backend.read_metadata(ref).num_rows for ref in self.partition_files(table, dt))

    def column_names(self, table: str, dt: str) -> list[str]:
        """The day's column names, from its first file."""
        return list(self.schema(table, dt).names)

    def schema(self, table: str, dt: str) -> pa.Schema:
        """The day's Arrow schema (with its pandas metadata), from its first file."""
        refs = self.partition_files(table, dt)
        if not refs:
            return pa.schema([])
        return self.backend.read_metadata(refs[0]).schema.to_arrow_schema()

    def write_partition(self, table: str, dt: str, data: pa.Table) -> str:
        """Replace the day's files with `data`, atomically for readers."""
        with self.backend.replacing(table, dt) as spool:
            per_file = self.backend.rows_per_file()
            for i, offset in enumerate(range(0, max(data.num_rows, 1), per_file)):
                _write_file(spool / f"part-{i:05d}.parquet", data.slice(offset, per_file))
        return self.partition_uri(table, dt)

    @contextlib.contextmanager
    def partition_writer(self, table: str, dt: str, schema: pa.Schema) -> Iterator[PartitionWriter]:
        """Replace the day's files with what is written through the yielded writer, swapped in only on success."""
        with self.backend.replacing(table, dt) as spool:
            writer = PartitionWriter(spool, schema, rows_per_file=self.backend.rows_per_file())
            try:
                yield writer
            except BaseException:
                # The spool is thrown away: no write of the writer's thread may still be going into it.
                writer.abort()
                raise
            writer.close()

    def delete_partition(self, table: str, dt: str) -> None:
        """Remove the day if present."""
        self.backend.delete_partition(table, dt)

    def list_partitions(self, table: str) -> dict[str, float]:
        """The table's partition keys and when each was last written (epoch seconds)."""
        return self.backend.list_partitions(table)

    def write_side_file(self, folder: str, dt: str, filename: str, text: str) -> str:
        """Replace `{base}/{folder}/dt={dt}/{filename}` (a per-day file beside the tables); its location."""
        return self.backend.write_text((folder, f"{self.backend.key_column}={dt}", filename), text)

    def side_file_url(self, folder: str, dt: str, filename: str, expires_s: int = SIDE_FILE_LINK_EXPIRY_S) -> str | None:
        """A browser link to a side file: a presigned URL on S3 (valid `expires_s`), None for local files."""
        return self.backend.url_of((folder, f"{self.backend.key_column}={dt}", filename), expires_s)


# Arrow's Parquet writer cuts pages where its input's chunks end: the same rows written in other pieces gave other
# bytes (measured: chunks of 50,000 against 65,536 rows). Each row group is written in chunks of this many rows
# from its start, so a day's files depend on its rows only (the Ray engine's blocks, the local engine's batches).
# Chunks of 65,536 are what the local engine's CPU scoring always wrote, so its earlier files stay byte-identical.
CANONICAL_CHUNK_ROWS = 1 << 16


def _canonical(rows: pa.Table) -> pa.Table:
    """`rows` in chunks of CANONICAL_CHUNK_ROWS from its first row (one copy of a row group: a few MB)."""
    return pa.Table.from_batches(rows.combine_chunks().to_batches(max_chunksize=CANONICAL_CHUNK_ROWS), schema=rows.schema)


class PartitionWriter:
    """Streams record batches into a spool folder: row groups of ROW_GROUP_SIZE, a new file every `rows_per_file` rows.

    Each full row group is encoded and compressed on a writer thread while the caller goes on (Arrow's writer releases
    the GIL), one row group at a time and in order: a stage computes its next rows while the last ones are written
    (on a 1M-row card day the writes were most of `raw_transactions`). A write's error is raised by the next `write`
    or by `close`; `abort` waits for the write in flight before the spool is thrown away.
    """

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_file: int | None = None, background: bool = True) -> None:
        self.folder = folder
        self.schema = schema
        self.rows_per_file = ROWS_PER_FILE if rows_per_file is None else rows_per_file
        self.rows_written = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._files = 0
        self._file_rows = 0
        self._sink = None
        self._writer: pq.ParquetWriter | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer") if background else None
        self._in_flight: Future | None = None
        # The sha256 of each file written, by name, once closed: a record of the exact bytes committed.
        self.files_sha256: dict[str, str] = {}

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Append rows (cast to the writer's schema); full row groups go to disk, the rest waits."""
        if batch.schema != self.schema:
            batch = batch.cast(self.schema) if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]).cast(self.schema)
        parts = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        for part in parts:
            if part.num_rows:
                self._pending.append(part)
                self._pending_rows += part.num_rows
        while self._pending_rows >= ROW_GROUP_SIZE:
            self._flush(ROW_GROUP_SIZE)

    def close(self) -> None:
        """Write what is left (an empty file when nothing was written, so the day keeps its schema) and sync."""
        try:
            self._wait()
            if self._pending_rows or (self._writer is None and not self._files):
                self._write_group(self._take(self._pending_rows))
            self._close_file()
        finally:
            self._stop()

    def abort(self) -> None:
        """Give up (the stage failed): wait for the write in flight, its own error dropped, and close the file."""
        try:
            self._wait()
        except Exception:  # the stage's own error is the one raised
            pass
        finally:
            self._stop()
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.close()
                self._sink.close()
                self._writer = self._sink = None

    def _take(self, rows: int) -> pa.Table:
        pending = pa.Table.from_batches(self._pending, schema=self.schema)
        group, rest = pending.slice(0, rows), pending.slice(rows)
        self._pending, self._pending_rows = rest.to_batches(), rest.num_rows
        return group

    def _flush(self, rows: int) -> None:
        group = self._take(rows)
        if self._thread is None:
            self._write_group(group)
            return
        # One row group in flight: its write must end (or raise) before the next is handed over, in order.
        self._wait()
        self._in_flight = self._thread.submit(self._write_group, group)

    def _wait(self) -> None:
        if self._in_flight is not None:
            done, self._in_flight = self._in_flight, None
            done.result()

    def _stop(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def _write_group(self, group: pa.Table) -> None:
        offset = 0
        while True:
            if self._writer is None or self._file_rows >= self.rows_per_file:
                self._open_file()
            take = min(group.num_rows - offset, self.rows_per_file - self._file_rows)
            self._writer.write_table(_canonical(group.slice(offset, take)), row_group_size=ROW_GROUP_SIZE)
            self._file_rows += take
            self.rows_written += take
            offset += take
            if offset >= group.num_rows:
                return

    def _open_file(self) -> None:
        self._close_file()
        self._sink = open(self.folder / f"part-{self._files:05d}.parquet", "wb")
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        self._files += 1
        self._file_rows = 0

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.flush()
        os.fsync(self._sink.fileno())
        self._sink.close()
        path = Path(self._sink.name)
        self.files_sha256[path.name] = file_sha256(path)
        self._writer = self._sink = None


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def replace_local_text(path: Path, text: str) -> Path:
    """Write a text file so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(staging, "w", encoding="utf-8") as sink:
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path


def _write_file(path: Path, data: pa.Table) -> None:
    with open(path, "wb") as sink:
        pq.write_table(data, sink, row_group_size=ROW_GROUP_SIZE, compression="zstd")
        sink.flush()
        os.fsync(sink.fileno())


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); False where the system or file system
    has no such call, so the caller falls back to renames. Any other failure is raised."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, f"could not swap {b} for its replacement: {os.strerror(err)}", str(a), None, str(b))


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, some musl builds)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
