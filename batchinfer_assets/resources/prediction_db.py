"""The prediction database downstream apps query.

A day's rows go in as one Arrow table and are bulk-loaded without Python code per row.

PostgreSQL: one table `predictions` (primary key `(dt, transaction_id)`, indexes on `transaction_id` and
`(dt, score)`), loaded through COPY in CSV that pyarrow writes chunk by chunk, rows sorted by `transaction_id`
so two of its three B-trees fill in key order.

SQLite: `predictions` is a view over one table per day (`predictions_day_YYYYMMDD`, keyed by `transaction_id`,
indexed by `score`), grouped by year (`predictions_year_YYYY`). A single table cannot be loaded under SQLite's
own floor of 2.8 s per million rows: whatever order the rows come in, one of its indexes fills in random order
(BENCHMARKS.md, "Publishing"). A day of its own is filled in key order and indexed by a sort, and replacing it
drops a table instead of deleting a million index entries one by one. Rows are handed to SQLite from Arrow in C
by the ADBC SQLite driver. Queries read the view as they would the table: SQLite pushes `WHERE transaction_id
= ?` into every day's primary key and `WHERE dt = ? ORDER BY score DESC LIMIT n` into that day's score index.
"""

from __future__ import annotations

import datetime as dt_
import re
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from sqlalchemy.dialects import sqlite as sa_sqlite

from batchinfer_assets.lib.redaction import redact

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

# SQLite: one table per day under the `predictions` view (see the module's docstring).
_SQLITE_DAY_PREFIX = "predictions_day_"
_SQLITE_YEAR_PREFIX = "predictions_year_"
# The columns of a day's table: the view adds `dt` from the table's name.
_SQLITE_DAY_COLUMNS = (
    ("transaction_id", "TEXT NOT NULL PRIMARY KEY"),
    ("score", "REAL NOT NULL"),
    ("label", "INTEGER NOT NULL"),
    ("model_name", "TEXT"),
    ("model_version", "TEXT NOT NULL"),
    ("customer_id", "TEXT"),
    ("event_time", "TEXT"),
    ("amount", "REAL"),
    ("merchant_category", "TEXT"),
    ("scoring_run_id", "INTEGER"),
)
_DAY_KEY = re.compile(r"\d{4}-\d{2}-\d{2}")

_COPY_CHUNK_ROWS = 65_536
# An unreachable host (dropped packets) would otherwise hang a run for the OS's TCP timeout.
_PG_CONNECT_TIMEOUT_S = 15
# A publish holds SQLite's write lock for seconds; another writer waits this long before failing.
_SQLITE_BUSY_TIMEOUT_S = 120
# Per connection, grown only as used: a 1M-row day's B-tree pages stay in memory through the load
# (with SQLite's default 2 MiB the same load took 8.7 s instead of about 6 s).
_SQLITE_CACHE_KIB = 256 * 1024
_SQLITE_JOURNAL_MODE = "WAL"
_SQLITE_WAL_LIMIT_BYTES = 64 * 1024 * 1024
_SCHEMA_LOCK_KEY = zlib.crc32(b"batchinfer:predictions:schema")


class PredictionDatabaseConnectionError(ConnectionError):
    """The prediction database could not be reached or refused the login."""


class PredictionsRefusedError(ValueError):
    """The day's rows cannot be published as they are (a missing column, a null or repeated id); nothing was written."""


class PredictionDatabaseResource(dg.ConfigurableResource):
    """Publishes a day's predictions to a SQL database, replacing that day's rows in one transaction."""

    url: str = Field(description="SQLAlchemy URL of the prediction database (sqlite:/// or postgresql+psycopg://).")

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def _is_postgres(self) -> bool:
        return sa.make_url(self.url).get_backend_name() == "postgresql"

    def _sqlite_path(self) -> str:
        """The SQLite database's file; an in-memory database is refused (no downstream app could read it)."""
        database = sa.make_url(self.url).database
        if database in (None, "", ":memory:") or database.startswith("file::memory:"):
            raise ValueError(
                f"prediction database {redact(self.url)} is in memory: downstream apps could not query it and it would "
                "be gone with the process; give a file (sqlite:////path/to/predictions.db)"
            )
        return database

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
            engine_args: dict[str, object] = {}
            if url.get_backend_name() == "sqlite":
                Path(self._sqlite_path()).parent.mkdir(parents=True, exist_ok=True)
                connect_args["timeout"] = _SQLITE_BUSY_TIMEOUT_S
                # No connection kept open between uses: a day is loaded by the ADBC driver, which links its own
                # copy of SQLite, and two copies of SQLite in one process must never hold the same file open at
                # once (closing one's descriptor drops the other's locks: sqlite.org/howtocorrupt.html, 2.2.1).
                engine_args["poolclass"] = sa.pool.NullPool
            if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
                connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
            engine = sa.create_engine(url, connect_args=connect_args, **engine_args)
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
                f"cannot connect to the prediction database ({self._where()}): {redact(str(exc.orig).strip())}"
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
        if not self._is_postgres():
            engine = self.engine  # creates or upgrades the schema first (through sqlite3; closed again)
            try:
                _replace_sqlite_day(self._sqlite_path(), dt, table, scoring_run)
            except _adbc_error() as exc:
                # Raise what SQLAlchemy raises for the same failure, so callers and the retry policy see one kind.
                raise sa.exc.DBAPIError.instance(
                    f"bulk load into {PREDICTIONS_TABLE} for {dt}", None, exc, _adbc_error(), dialect=engine.dialect
                ) from exc
            return table.num_rows
        with self._begin(self.engine) as conn:
            # Two runs replacing the same day would interleave their deletes and inserts and collide.
            day_lock = zlib.crc32(f"batchinfer:predictions:{dt}".encode())
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(day_lock)))
            conn.execute(sa.delete(predictions_table).where(predictions_table.c.dt == dt))
            run_id = None if scoring_run is None else _record_scoring_run(conn, dt, scoring_run)
            try:
                _copy_csv(conn, dt, table, run_id)
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
        cursor.execute(f"PRAGMA journal_size_limit={_SQLITE_WAL_LIMIT_BYTES}")
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
    """Create the tables, or bring tables an earlier version created up to date: add columns and indexes (PostgreSQL),
    split the single table into day tables (SQLite)."""
    inspector = sa.inspect(conn)
    scoring_runs_table.create(conn, checkfirst=True)
    _widen_string_columns(conn, inspector, scoring_runs_table)
    if conn.dialect.name == "sqlite":
        _ensure_sqlite_schema(conn)
        return
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
    for name in ("transaction_id", "score", "label", "model_version"):
        nulls = table.column(name).null_count
        if nulls:
            raise PredictionsRefusedError(f"predictions for {dt} have {nulls} null {name}(s): {refused}")
    if len(ids) > 1 and pc.any(pc.less(ids[1:], ids[:-1])).as_py():
        table = table.take(pc.sort_indices(ids))
        ids = table.column("transaction_id")
    # Sorted: a repeated id sits next to itself. Counted (for the message) only when there is one.
    if len(ids) > 1 and pc.any(pc.equal(ids[1:], ids[:-1])).as_py():
        counts = pc.value_counts(rows.column("transaction_id"))
        repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        raise PredictionsRefusedError(
            f"predictions for {dt} repeat {len(repeated)} transaction_id(s), e.g. {repeated[0].as_py()!r}: {refused}"
        )
    _refuse_unstorable(dt, table, refused)
    return table


def _refuse_unstorable(dt: str, table: pa.Table, refused: str) -> None:
    """Refuse text the table cannot hold (over the column's length, or with a NUL), naming the column and the first id.

    Checked on every backend: SQLite would store both, PostgreSQL would fail the whole COPY without naming either.
    """
    ids = table.column("transaction_id")
    for name, target in _INPUT_TYPES.items():
        if target != pa.string():
            continue
        column = table.column(name)
        length = predictions_table.c[name].type.length
        problems = [(pc.match_substring(column, "\x00"), "hold a NUL character, which PostgreSQL text cannot store")]
        if length is not None:
            problems.insert(0, (pc.greater(pc.utf8_length(column), length), f"are longer than the {length} characters the column holds"))
        for mask, what in problems:
            count = pc.sum(mask).as_py() or 0
            if count:
                first = ids[pc.index(mask, True).as_py()].as_py()
                shown = repr(first) if len(first) <= 64 else f"{first[:64]!r}... ({len(first)} characters)"
                raise PredictionsRefusedError(
                    f"predictions for {dt}: {count} {name} value(s) {what}, first at transaction_id {shown}: {refused}"
                )


def _adbc_error() -> type[Exception]:
    from adbc_driver_manager import Error

    return Error


def _day_table(dt: str) -> str:
    """The SQLite table holding the day's rows (`dt` checked to be a day, so the name needs no quoting)."""
    return _SQLITE_DAY_PREFIX + dt.replace("-", "")


def _sqlite_day_ddl(name: str) -> str:
    columns = ", ".join(f"{column} {declared}" for column, declared in _SQLITE_DAY_COLUMNS)
    return f"CREATE TABLE {name} ({columns}) WITHOUT ROWID"


def _sqlite_day_index(name: str) -> str:
    return f"CREATE INDEX {name}_score ON {name} (score)"


def _sqlite_views(day_tables: list[str]) -> list[str]:
    """DDL that (re)creates the `predictions` view over the days' tables, through one view per year.

    A compound SELECT takes at most 500 terms in SQLite; a year has at most 366 days, and SQLite flattens the
    nested views so queries still reach each day's indexes.
    """
    columns = ", ".join(column for column, _ in _SQLITE_DAY_COLUMNS)
    by_year: dict[str, list[str]] = {}
    for name in sorted(day_tables):
        by_year.setdefault(name[len(_SQLITE_DAY_PREFIX):][:4], []).append(name)
    statements = [f"DROP VIEW IF EXISTS {PREDICTIONS_TABLE}"]
    years = []
    for year, names in by_year.items():
        view = f"{_SQLITE_YEAR_PREFIX}{year}"
        arms = " UNION ALL ".join(
            f"SELECT '{_day_of(name)}' AS dt, {columns} FROM {name}" for name in names
        )
        statements += [f"DROP VIEW IF EXISTS {view}", f"CREATE VIEW {view} AS {arms}"]
        years.append(view)
    if years:
        body = " UNION ALL ".join(f"SELECT dt, {columns} FROM {view}" for view in years)
    else:  # nothing published yet: the columns, no rows
        nulls = ", ".join(f"CAST(NULL AS {declared.split()[0]}) AS {column}" for column, declared in _SQLITE_DAY_COLUMNS)
        body = f"SELECT CAST(NULL AS TEXT) AS dt, {nulls} WHERE 0"
    return [*statements, f"CREATE VIEW {PREDICTIONS_TABLE} AS {body}"]


def _day_of(table: str) -> str:
    digits = table[len(_SQLITE_DAY_PREFIX):]
    return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"


_SQLITE_DAY_TABLES = f"SELECT name FROM sqlite_schema WHERE type = 'table' AND name GLOB '{_SQLITE_DAY_PREFIX}[0-9]*'"


def _ensure_sqlite_schema(conn: sa.Connection) -> None:
    """The `predictions` view over the day tables; a `predictions` table of an earlier version is split into them."""
    kind = conn.exec_driver_sql("SELECT type FROM sqlite_schema WHERE name = ?", (PREDICTIONS_TABLE,)).scalar()
    if kind == "view":
        return
    if kind == "table":
        present = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({PREDICTIONS_TABLE})")}
        selected = ", ".join(c if c in present else f"NULL AS {c}" for c, _ in _SQLITE_DAY_COLUMNS)
        days = conn.exec_driver_sql(f"SELECT DISTINCT dt FROM {PREDICTIONS_TABLE} ORDER BY dt").scalars().all()
        for day in days:
            name = _day_table(_checked_day(day))
            conn.exec_driver_sql(_sqlite_day_ddl(name))
            conn.exec_driver_sql(
                f"INSERT INTO {name} SELECT {selected} FROM {PREDICTIONS_TABLE} WHERE dt = ? ORDER BY transaction_id",
                (day,),
            )
            conn.exec_driver_sql(_sqlite_day_index(name))
        conn.exec_driver_sql(f"DROP TABLE {PREDICTIONS_TABLE}")
    day_tables = conn.exec_driver_sql(_SQLITE_DAY_TABLES).scalars().all()
    for statement in _sqlite_views(list(day_tables)):
        conn.exec_driver_sql(statement)


def _checked_day(dt: str) -> str:
    if not isinstance(dt, str) or not _DAY_KEY.fullmatch(dt):
        raise PredictionsRefusedError(f"partition {dt!r} is not a day (YYYY-MM-DD): nothing was published")
    dt_.date.fromisoformat(dt)
    return dt


def _replace_sqlite_day(path: str, dt: str, table: pa.Table, scoring_run: Mapping[str, Any] | None) -> None:
    """Replace the day's table in one transaction: drop it, create it, load it from Arrow, index it."""
    import adbc_driver_sqlite.dbapi as adbc_sqlite

    name = _day_table(_checked_day(dt))
    conn = adbc_sqlite.connect(path, autocommit=True)  # transactions below are explicit
    try:
        cursor = conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA cache_size = -{_SQLITE_CACHE_KIB}")
        cursor.execute(f"PRAGMA journal_size_limit = {_SQLITE_WAL_LIMIT_BYTES}")
        cursor.execute("BEGIN IMMEDIATE")  # waits (busy_timeout) while another run publishes
        try:
            run_id = None if scoring_run is None else _record_scoring_run_sqlite(cursor, dt, scoring_run)
            cursor.execute(f"{_SQLITE_DAY_TABLES} AND name = ?", (name,))
            new_day = not cursor.fetchall()
            cursor.execute(f"DROP TABLE IF EXISTS {name}")
            cursor.execute(_sqlite_day_ddl(name))
            cursor.adbc_ingest(name, _sqlite_rows(table, run_id), mode="append")
            _index_day_table(cursor, name)
            if new_day:
                cursor.execute(_SQLITE_DAY_TABLES)
                for statement in _sqlite_views([row[0] for row in cursor.fetchall()]):
                    cursor.execute(statement)
            cursor.execute("COMMIT")
        except BaseException:
            with suppress(_adbc_error()):  # a broken connection rolls back by itself; keep the first error
                cursor.execute("ROLLBACK")  # the day's previous table, rows and views stay as they were
            raise
        finally:
            cursor.close()
    finally:
        conn.close()


def _index_day_table(cursor: Any, name: str) -> None:
    """The day's score index, built once the rows are in (a sort, instead of entry by entry in random order)."""
    cursor.execute(_sqlite_day_index(name))


def _sqlite_rows(table: pa.Table, scoring_run_id: int | None) -> pa.Table:
    """The day's rows as the day table stores them: event_time as UTC ISO text, the scoring run's id."""
    # Arrow formats naive (UTC wall clock) timestamps fast; zoned ones go through tz lookups.
    event_time = pc.binary_join_element_wise(
        pc.cast(pc.cast(table.column("event_time"), pa.timestamp("us")), pa.string()), "+00:00", ""
    )
    columns = {name: table.column(name) for name, _ in _SQLITE_DAY_COLUMNS if name not in ("event_time", "scoring_run_id")}
    columns["event_time"] = event_time
    columns["scoring_run_id"] = pa.repeat(pa.scalar(scoring_run_id, pa.int64()), table.num_rows)
    return pa.table({name: columns[name] for name, _ in _SQLITE_DAY_COLUMNS})


def _record_scoring_run_sqlite(cursor: Any, dt: str, scoring_run: Mapping[str, Any]) -> int:
    """`_record_scoring_run` on the ADBC connection that loads the day (same transaction)."""
    cursor.execute(
        f"SELECT id FROM {SCORING_RUNS_TABLE} WHERE dagster_run_id = ? AND dt = ?", (str(scoring_run["dagster_run_id"]), dt)
    )
    existing = cursor.fetchall()
    if existing:
        return int(existing[0][0])
    values = {name: scoring_run[name] for name in SCORING_RUN_FIELDS}
    values["dt"] = dt
    values["published_at"] = dt_.datetime.now(dt_.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    names = list(values)
    # One row through Arrow: typed columns, so a None binds as NULL of the column's type.
    row = pa.table({name: pa.array([values[name]], _SCORING_RUN_TYPES.get(name, pa.string())) for name in names})
    cursor.execute(
        f"INSERT INTO {SCORING_RUNS_TABLE} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) RETURNING id",
        row,
    )
    return int(cursor.fetchall()[0][0])


_SCORING_RUN_TYPES = {"batch_size": pa.int64(), "threshold": pa.float64()}


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
