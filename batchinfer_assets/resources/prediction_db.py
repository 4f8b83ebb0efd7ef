"""The prediction database downstream apps query.

A day's rows go in as one Arrow table and are bulk-loaded without Python code per row: PostgreSQL gets
them through COPY in CSV that pyarrow writes chunk by chunk; SQLite through the sqlite3 module's
`executemany` fed by `zip()` over column lists that numpy/pyarrow build. Both load rows sorted by
`transaction_id`, so two of the table's three B-trees (the primary key and the `transaction_id` index)
are filled in key order; see BENCHMARKS.md, "Publishing", for what each choice measured.
"""

from __future__ import annotations

import datetime as dt_
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from sqlalchemy.dialects import sqlite as sa_sqlite

PREDICTIONS_TABLE = "predictions"
SCORING_RUNS_TABLE = "scoring_runs"

# SQLite has no timestamp type: event_time is ISO-8601 text in UTC with an explicit offset,
# e.g. '2025-01-01 13:22:25.290561+00:00', which sorts chronologically, is what SQLite's date
# functions accept, and reads back through SQLAlchemy as a timezone-aware datetime.
_SQLITE_UTC_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d+00:00"
)


class UtcDateTime(sa.types.TypeDecorator):
    """A timezone-aware timestamp stored in UTC: TIMESTAMP WITH TIME ZONE, or UTC ISO text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa_sqlite.DATETIME(storage_format=_SQLITE_UTC_FORMAT))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: dt_.datetime | None, dialect: sa.Dialect) -> dt_.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # naive timestamps are UTC, as everywhere in this project
            return value.replace(tzinfo=dt_.UTC)
        return value.astimezone(dt_.UTC)

    def process_result_value(self, value: dt_.datetime | None, dialect: sa.Dialect) -> dt_.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # written by another tool without an offset
            return value.replace(tzinfo=dt_.UTC)
        return value.astimezone(dt_.UTC)


_metadata = sa.MetaData()
predictions_table = sa.Table(
    PREDICTIONS_TABLE,
    _metadata,
    sa.Column("dt", sa.String(10), primary_key=True),
    sa.Column("transaction_id", sa.String(128), primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("label", sa.SmallInteger, nullable=False),
    sa.Column("model_name", sa.String(256)),
    sa.Column("model_version", sa.String(64), nullable=False),
    # Business columns; nullable so that a table created by an older version gains them in place.
    sa.Column("customer_id", sa.String(128)),
    sa.Column("event_time", UtcDateTime()),
    sa.Column("amount", sa.Float),
    sa.Column("merchant_category", sa.String(64)),
    # Which scoring produced the row: scoring_runs.id (model, version, artifact checksum, input snapshot, code).
    sa.Column("scoring_run_id", sa.Integer),
    # One transaction_id, day unknown.
    sa.Index("ix_predictions_transaction_id", "transaction_id"),
    # A day's highest scores: WHERE dt = ? ORDER BY score DESC LIMIT n walks this index backwards.
    sa.Index("ix_predictions_dt_score", "dt", "score"),
    # SQLite: rows live in the primary key's B-tree, so a day's rows are contiguous and there is
    # no separate rowid tree to maintain. Ignored by PostgreSQL.
    sqlite_with_rowid=False,
)
# One row per scoring of a day that was published: what "model name + version" cannot say alone (three registries
# can each hold a "fraud-detector v1"), so a score traces back to exact bytes of model and input with one join.
scoring_runs_table = sa.Table(
    SCORING_RUNS_TABLE,
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dt", sa.String(10), nullable=False),
    sa.Column("dagster_run_id", sa.String(64), nullable=False),
    sa.Column("model_uri", sa.String(1024), nullable=False),
    sa.Column("pinned_model_uri", sa.String(1024), nullable=False),
    sa.Column("model_name", sa.String(256)),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("model_run_id", sa.String(64)),
    sa.Column("tracking_uri", sa.String(1024)),
    sa.Column("artifact_checksum", sa.String(64), nullable=False),
    # `sha256:` and 64 hex digits (71 characters); PostgreSQL enforces the length, SQLite does not.
    sa.Column("input_snapshot_hash", sa.String(128), nullable=False),
    sa.Column("code_version", sa.String(64)),
    sa.Column("engine", sa.String(32)),
    sa.Column("device", sa.String(32)),
    sa.Column("batch_size", sa.Integer),
    sa.Column("precision", sa.String(8)),
    sa.Column("threshold", sa.Float),
    sa.Column("published_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("dagster_run_id", "dt", name="uq_scoring_runs_run_dt"),
)
SCORING_RUN_FIELDS = tuple(c.name for c in scoring_runs_table.columns if c.name not in ("id", "dt", "published_at"))
_COLUMNS = tuple(c.name for c in predictions_table.columns)
# The columns the caller's Arrow table must hold (dt comes from the partition key) and their types here.
_INPUT_TYPES: dict[str, pa.DataType] = {
    "transaction_id": pa.string(),
    "score": pa.float64(),  # float32 scores widen exactly; both backends store them as double
    "label": pa.int16(),
    "model_name": pa.string(),
    "model_version": pa.string(),
    "customer_id": pa.string(),
    "event_time": pa.timestamp("us", tz="UTC"),
    "amount": pa.float64(),
    "merchant_category": pa.string(),
}
# Indexes an earlier version created that the current definition covers (the primary key leads with dt).
_RETIRED_INDEXES = ("ix_predictions_dt",)
# Few distinct values a day: passed to sqlite3 as repeated references to a handful of str objects.
_LOW_CARDINALITY = ("model_name", "model_version", "merchant_category")

_COPY_CHUNK_ROWS = 65_536
# An unreachable host (dropped packets) would otherwise hang a run for the OS's TCP timeout.
_PG_CONNECT_TIMEOUT_S = 15
# A publish holds SQLite's write lock for seconds; another writer waits this long before failing.
_SQLITE_BUSY_TIMEOUT_S = 120
# Per connection, grown only as used: a 1M-row day's B-tree pages stay in memory through the load
# (with SQLite's default 2 MiB the same load took 8.7 s instead of about 6 s).
_SQLITE_CACHE_KIB = 256 * 1024
_SQLITE_JOURNAL_MODE = "WAL"
_SCHEMA_LOCK_KEY = zlib.crc32(b"batchinfer:predictions:schema")


class PredictionDatabaseConnectionError(ConnectionError):
    """The prediction database could not be reached or refused the login."""


class PredictionsRefusedError(ValueError):
    """The day's rows cannot be published as they are (a missing column, a null or repeated id); nothing was written."""


class PredictionDatabaseResource(dg.ConfigurableResource):
    """Publishes a day's predictions to a SQL database, replacing that day's rows in one transaction."""

    url: str = Field(description="SQLAlchemy URL of the prediction database (sqlite:/// or postgresql+psycopg://).")

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def safe_url(self) -> str:
        """The URL with any password masked, for logs and metadata."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def _is_postgres(self) -> bool:
        return sa.make_url(self.url).get_backend_name() == "postgresql"

    def _where(self) -> str:
        """Host, port, database and user of the URL, never its password."""
        url = sa.make_url(self.url)
        if url.get_backend_name() == "sqlite":
            return f"sqlite database {url.database or ':memory:'}"
        return (
            f"{url.get_backend_name()} database {url.database!r} at {url.host or 'localhost'}:{url.port or 5432}"
            f" as user {url.username!r}"
        )

    @property
    def engine(self) -> sa.Engine:
        """A pooled engine, created on first use (creating or upgrading the table) and reused for the run."""
        if self._engine is None:
            url = sa.make_url(self.url)
            connect_args: dict[str, object] = {}
            if url.get_backend_name() == "sqlite":
                if url.database not in (None, "", ":memory:"):
                    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
                connect_args["timeout"] = _SQLITE_BUSY_TIMEOUT_S
            if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
                connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
            engine = sa.create_engine(url, connect_args=connect_args)
            if url.get_backend_name() == "sqlite":
                _configure_sqlite(engine)
            with self._begin(engine, sqlite_begin="BEGIN IMMEDIATE") as conn:
                if self._is_postgres():
                    # Runs publishing at the same time would otherwise race to create or upgrade the table.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
                _ensure_schema(conn)
            self._engine = engine
        return self._engine

    @contextmanager
    def _begin(self, engine: sa.Engine, sqlite_begin: str = "BEGIN") -> Iterator[sa.Connection]:
        """A transaction; a failure to connect becomes an error naming the database, host and port."""
        try:
            conn = engine.connect()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise PredictionDatabaseConnectionError(
                f"cannot connect to the prediction database ({self._where()}): {str(exc.orig).strip()}"
            ) from None
        with conn:
            conn = conn.execution_options(batchinfer_sqlite_begin=sqlite_begin)
            with conn.begin():
                yield conn

    def replace_partition(self, dt: str, rows: pa.Table, scoring_run: Mapping[str, Any] | None = None) -> int:
        """Delete the day's rows and insert `rows` atomically; returns rows written.

        `rows` holds transaction_id, score, label, model_name, model_version, customer_id, event_time,
        amount and merchant_category (more columns are ignored). `scoring_run` (the SCORING_RUN_FIELDS of the
        scoring that produced them) is recorded in `scoring_runs` in the same transaction and each row links
        to it. Nothing is written, and the day's previous rows are kept, when a column is missing or a
        transaction_id is null or repeated.
        """
        table = _prepare(dt, rows)
        if scoring_run is not None:
            missing = [name for name in SCORING_RUN_FIELDS if name not in scoring_run]
            if missing:
                raise PredictionsRefusedError(f"scoring run of {dt} lacks {missing}: nothing was published")
        with self._begin(self.engine, sqlite_begin="BEGIN IMMEDIATE") as conn:
            if self._is_postgres():
                # Two runs replacing the same day would interleave their deletes and inserts and collide.
                day_lock = zlib.crc32(f"batchinfer:predictions:{dt}".encode())
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(day_lock)))
            conn.execute(sa.delete(predictions_table).where(predictions_table.c.dt == dt))
            run_id = None if scoring_run is None else _record_scoring_run(conn, dt, scoring_run)
            load = _copy_csv if self._is_postgres() else _insert_sqlite
            try:
                load(conn, dt, table, run_id)
            except conn.dialect.loaded_dbapi.Error as exc:
                # The load runs on the driver's own cursor; raise what SQLAlchemy would have raised.
                raise sa.exc.DBAPIError.instance(
                    f"bulk load into {PREDICTIONS_TABLE} for {dt}", None, exc, conn.dialect.loaded_dbapi.Error
                ) from exc
        return table.num_rows

    def release_connections(self) -> None:
        """Close pooled connections (the next call opens new ones, with the same settings).

        A pooled SQLite connection keeps its page cache (up to the configured size) after a day is published;
        a run publishing many days one after another would carry it from day to day.
        """
        if self._engine is not None:
            self._engine.dispose()

    def published_snapshot_hashes(self) -> set[str]:
        """The input snapshot hashes behind the rows published now (one scoring run per published day)."""
        runs, rows = scoring_runs_table, predictions_table
        days = sa.select(runs.c.dt).distinct().subquery()
        current = sa.select(rows.c.scoring_run_id).where(rows.c.dt == days.c.dt).limit(1).scalar_subquery()
        query = sa.select(runs.c.input_snapshot_hash).where(runs.c.id.in_(sa.select(current).select_from(days))).distinct()
        with self._begin(self.engine) as conn:
            return set(conn.execute(query).scalars())

    def count_partition(self, dt: str) -> int:
        """Rows currently published for the day."""
        with self._begin(self.engine) as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(predictions_table).where(predictions_table.c.dt == dt)
            ).scalar_one()


def _configure_sqlite(engine: sa.Engine) -> None:
    """Explicit transactions (DDL included) and bulk-friendly settings on every SQLite connection."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # pysqlite's own transaction handling begins only before DML and commits DDL on its own;
        # SQLAlchemy's "begin" event below issues BEGIN instead, so one transaction covers everything.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL: readers keep reading the previous rows while a day is replaced, and with
            # synchronous=NORMAL a commit is durable without an fsync per transaction (no corruption
            # on power loss; at worst the last commits roll back). The mode persists in the file.
            cursor.execute(f"PRAGMA journal_mode={_SQLITE_JOURNAL_MODE}")
        except dbapi_connection.OperationalError:
            pass  # another connection holds the file; it stays in its current mode
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
        # Without it the WAL file keeps the size of the largest day ever written.
        cursor.execute("PRAGMA journal_size_limit=67108864")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("batchinfer_sqlite_begin", "BEGIN"))


def _record_scoring_run(conn: sa.Connection, dt: str, scoring_run: Mapping[str, Any]) -> int:
    """The id of the day's scoring run in `scoring_runs`, inserted on its first publication."""
    runs = scoring_runs_table
    key = (runs.c.dagster_run_id == str(scoring_run["dagster_run_id"])) & (runs.c.dt == dt)
    existing = conn.execute(sa.select(runs.c.id).where(key)).scalar_one_or_none()
    if existing is not None:
        return existing
    values = {name: scoring_run[name] for name in SCORING_RUN_FIELDS}
    return conn.execute(
        sa.insert(runs).values(dt=dt, published_at=dt_.datetime.now(dt_.UTC), **values).returning(runs.c.id)
    ).scalar_one()


def _ensure_schema(conn: sa.Connection) -> None:
    """Create the tables, or bring tables an earlier version created up to date: add columns and indexes."""
    inspector = sa.inspect(conn)
    scoring_runs_table.create(conn, checkfirst=True)
    _widen_string_columns(conn, inspector, scoring_runs_table)
    if not inspector.has_table(PREDICTIONS_TABLE):
        predictions_table.create(conn)
        return
    present = {column["name"] for column in inspector.get_columns(PREDICTIONS_TABLE)}
    preparer = conn.dialect.identifier_preparer
    for column in predictions_table.columns:
        if column.name in present:
            continue
        if not column.nullable:
            raise RuntimeError(
                f"table {PREDICTIONS_TABLE} in the prediction database lacks required column {column.name!r}"
                " and cannot gain it in place: migrate it or publish to a new database"
            )
        conn.execute(
            sa.text(
                f"ALTER TABLE {preparer.quote(PREDICTIONS_TABLE)} ADD COLUMN {preparer.quote(column.name)}"
                f" {column.type.compile(dialect=conn.dialect)}"
            )
        )
    indexes = {index["name"] for index in inspector.get_indexes(PREDICTIONS_TABLE)}
    for name in _RETIRED_INDEXES:
        if name in indexes:
            conn.execute(sa.text(f"DROP INDEX {preparer.quote(name)}"))
    for index in predictions_table.indexes:
        if index.name not in indexes:
            index.create(conn)


def _widen_string_columns(conn: sa.Connection, inspector: sa.Inspector, table: sa.Table) -> None:
    """Widen columns an earlier version created narrower than the definition (PostgreSQL only: SQLite ignores
    lengths). 0.3.0 created `scoring_runs.input_snapshot_hash` as VARCHAR(64), too short for the hashes it
    stores, so no day could be published to PostgreSQL; widening a VARCHAR there rewrites nothing."""
    if conn.dialect.name != "postgresql":
        return
    preparer = conn.dialect.identifier_preparer
    for existing in inspector.get_columns(table.name):
        wanted = table.columns.get(existing["name"])
        length = getattr(existing["type"], "length", None)
        if wanted is None or not isinstance(wanted.type, sa.String) or length is None or wanted.type.length is None:
            continue
        if length < wanted.type.length:
            conn.execute(
                sa.text(
                    f"ALTER TABLE {preparer.quote(table.name)} ALTER COLUMN {preparer.quote(wanted.name)}"
                    f" TYPE {wanted.type.compile(dialect=conn.dialect)}"
                )
            )


def _prepare(dt: str, rows: pa.Table) -> pa.Table:
    """The input columns in their storage types, sorted by transaction_id; refuses what cannot be published."""
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    if not isinstance(rows, pa.Table):
        raise TypeError(f"predictions for {dt} must be a pyarrow.Table, got {type(rows).__name__}")
    refused = "nothing was published, the day's previous rows are kept"
    missing = [name for name in _INPUT_TYPES if name not in rows.column_names]
    if missing:
        raise PredictionsRefusedError(
            f"predictions for {dt} lack column(s) {', '.join(repr(name) for name in missing)}: {refused}"
        )
    columns = {}
    for name, target in _INPUT_TYPES.items():
        column = rows.column(name)
        try:
            if pa.types.is_timestamp(target) and not pa.types.is_timestamp(column.type):
                raise TypeError(f"expected a timestamp, got {column.type}")
            if target == pa.string() and pa.types.is_large_string(column.type):
                pass  # written as it is; no 2 GiB offset limit to run into
            elif column.type != target:
                # Timestamps: any unit or zone names the same instant in UTC microseconds (ns truncates).
                column = pc.cast(column, target, safe=not pa.types.is_timestamp(target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
            raise PredictionsRefusedError(
                f"predictions for {dt}: column {name!r} of type {rows.column(name).type}: {exc}: {refused}"
            ) from None
        columns[name] = column
    table = pa.table(columns)

    ids = table.column("transaction_id")
    if ids.null_count:
        raise PredictionsRefusedError(f"predictions for {dt} have {ids.null_count} null transaction_id(s): {refused}")
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        raise PredictionsRefusedError(
            f"predictions for {dt} repeat {len(repeated)} transaction_id(s), e.g. {repeated[0].as_py()!r}: {refused}"
        )
    if len(ids) > 1 and pc.any(pc.less(ids[1:], ids[:-1])).as_py():
        table = table.take(pc.sort_indices(ids))
    return table


def _insert_sqlite(conn: sa.Connection, dt: str, table: pa.Table, scoring_run_id: int | None) -> None:
    """INSERT the rows with sqlite3's executemany over zipped column lists, in the open transaction."""
    values = [repeat(dt, table.num_rows)]
    for name in _COLUMNS[1:]:
        if name == "scoring_run_id":
            values.append(repeat(scoring_run_id, table.num_rows))
            continue
        column = table.column(name)
        if name == "event_time":
            # Arrow formats naive (UTC wall clock) timestamps fast; zoned ones go through tz lookups.
            column = pc.binary_join_element_wise(
                pc.cast(pc.cast(column, pa.timestamp("us")), pa.string()), "+00:00", ""
            )
        if name in _LOW_CARDINALITY:
            values.append(_repeated_strings(column))
        else:
            values.append(column.to_numpy(zero_copy_only=False).tolist())
    placeholders = ", ".join("?" * len(_COLUMNS))
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(
            f"INSERT INTO {PREDICTIONS_TABLE} ({', '.join(_COLUMNS)}) VALUES ({placeholders})", zip(*values)
        )
    finally:
        cursor.close()


def _repeated_strings(column: pa.ChunkedArray) -> list[str | None]:
    """A string column as a list that repeats one str object per distinct value (None for nulls)."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    distinct = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)
    return distinct[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy()].tolist()


def _copy_csv(conn: sa.Connection, dt: str, table: pa.Table, scoring_run_id: int | None) -> None:
    """Stream the rows into PostgreSQL's COPY as CSV, in the connection's open transaction.

    pyarrow's CSV writer quotes every string (an empty string is "") and leaves nulls as empty
    unquoted fields, which COPY's CSV format reads as NULL; timestamps are written as UTC with a Z
    suffix, doubles in their shortest round-tripping form.
    """
    table = table.append_column("scoring_run_id", pa.repeat(pa.scalar(scoring_run_id, pa.int64()), table.num_rows))
    table = pa.table({"dt": pa.repeat(pa.scalar(dt, pa.string()), table.num_rows), **{
        name: table.column(name) for name in _COLUMNS[1:]
    }})
    sql = f"COPY {PREDICTIONS_TABLE} ({', '.join(_COLUMNS)}) FROM STDIN WITH (FORMAT csv, ENCODING 'UTF8')"
    chunks = _csv_chunks(table)
    driver = conn.connection.driver_connection
    if sa.make_url(conn.engine.url).get_driver_name() == "psycopg2":
        with driver.cursor() as cursor:
            cursor.copy_expert(sql, _ChunkReader(chunks), size=1 << 20)
    else:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            for chunk in chunks:
                copy.write(chunk)


def _csv_chunks(table: pa.Table) -> Iterator[memoryview]:
    options = pa_csv.WriteOptions(include_header=False)
    for start in range(0, table.num_rows, _COPY_CHUNK_ROWS):
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(table.slice(start, _COPY_CHUNK_ROWS), sink, options)
        yield memoryview(sink.getvalue())


class _ChunkReader:
    """A read()-able file over byte chunks, for psycopg2's copy_expert."""

    def __init__(self, chunks: Iterator[memoryview]) -> None:
        self._chunks = chunks
        self._current = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        while not self._current:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._current = chunk
        if size < 0 or size >= len(self._current):
            out, self._current = self._current, memoryview(b"")
        else:
            out, self._current = self._current[:size], self._current[size:]
        return bytes(out)
