"""The prediction database downstream apps query.

A day's rows go in as one Arrow table, or as a stream of them for a day too big to hold (loaded one chunk at a
time, all in one transaction), and are bulk-loaded without Python code per row. The table's layout comes from the
domain: its id column (the key, with the day), the score columns, then its business columns. One database holds
one domain's predictions.

PostgreSQL: one table `predictions` (primary key `(dt, id)`, indexes on the id and `(dt, score)`), loaded through
COPY in CSV that pyarrow writes chunk by chunk, rows sorted by the id (within each of a day's chunks) so two of its
three B-trees fill in key order.

SQLite: `predictions` is a view over one table per day (`predictions_day_YYYYMMDD`, keyed by the id, indexed by
`score`), grouped by year (`predictions_year_YYYY`). A single table cannot be loaded under SQLite's own floor of
2.8 s per million rows: whatever order the rows come in, one of its indexes fills in random order (BENCHMARKS.md,
"Publishing"). A day of its own is filled in key order and indexed by a sort, and replacing it drops a table
instead of deleting a million index entries one by one. Rows are handed to SQLite from Arrow in C by the ADBC
SQLite driver. Queries read the view as they would the table: SQLite pushes `WHERE <id column> = ?` into every
day's primary key and `WHERE dt = ? ORDER BY score DESC LIMIT n` into that day's score index.
"""

from __future__ import annotations

import datetime as dt_
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from sqlalchemy.dialects import sqlite as sa_sqlite

if TYPE_CHECKING:
    from batchinfer_assets.domain import Domain

PREDICTIONS_TABLE = "predictions"
SCORING_RUNS_TABLE = "scoring_runs"

# SQLite has no timestamp type: timestamp columns are ISO-8601 text in UTC with an explicit offset,
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

# Text lengths in the prediction database: the id and text business columns hold this many characters unless the
# domain declares another length for a column (`Domain.text_lengths`).
_TEXT_LENGTH = 128
# Indexes an earlier version created that the current definition covers (the primary key leads with dt).
_RETIRED_INDEXES = ("ix_predictions_dt",)
# PostgreSQL's limit on an identifier's length (an index named after a long id column is cut to it).
_PG_MAX_IDENTIFIER = 63

# SQLite: one table per day under the `predictions` view (see the module's docstring).
_SQLITE_DAY_PREFIX = "predictions_day_"
_SQLITE_YEAR_PREFIX = "predictions_year_"
_SQLITE_QUOTE = sa_sqlite.dialect().identifier_preparer.quote


@dataclass(frozen=True)
class _Layout:
    """Table `predictions` for one domain: its definition, the caller's columns and the SQLite day tables."""

    domain: str
    id_column: str
    # The PostgreSQL table; reading SQLite's view through it gives the same types back.
    table: sa.Table
    # The columns the caller's Arrow table must hold (dt comes from the partition key) and their types here.
    input_types: dict[str, pa.DataType]
    # The columns of a day's SQLite table and their declarations: the view adds `dt` from the table's name.
    sqlite_columns: tuple[tuple[str, str], ...]


_LAYOUTS: dict[tuple[Any, ...], _Layout] = {}


def _layout(domain: Domain) -> _Layout:
    """The domain's layout of table `predictions`, built once per domain (name, id and business columns)."""
    business = tuple((name, domain.landing_columns[name]) for name in domain.business_columns)
    lengths = tuple(sorted(domain.text_lengths.items()))
    key = (domain.name, domain.id_column, business, lengths)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = _build_layout(domain.name, domain.id_column, business, dict(lengths))
    return _LAYOUTS[key]


def _build_layout(
    domain: str, id_column: str, business: tuple[tuple[str, pa.DataType], ...], lengths: dict[str, int]
) -> _Layout:
    stored = [_stored_type(domain, name, type_, lengths) for name, type_ in business]
    table = sa.Table(
        PREDICTIONS_TABLE,
        sa.MetaData(),
        sa.Column("dt", sa.String(10), primary_key=True),
        sa.Column(id_column, sa.String(_TEXT_LENGTH), primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("label", sa.SmallInteger, nullable=False),
        sa.Column("model_name", sa.String(256)),
        sa.Column("model_version", sa.String(64), nullable=False),
        # Business columns; nullable so that a table created by an older version gains them in place.
        *(sa.Column(name, sql_type) for (name, _), (sql_type, _, _) in zip(business, stored, strict=True)),
        # Which scoring produced the row: scoring_runs.id (model, version, artifact checksum, input snapshot, code).
        sa.Column("scoring_run_id", sa.Integer),
        # One id, day unknown.
        sa.Index(f"ix_predictions_{id_column}"[:_PG_MAX_IDENTIFIER], id_column),
        # A day's highest scores: WHERE dt = ? ORDER BY score DESC LIMIT n walks this index backwards.
        sa.Index("ix_predictions_dt_score", "dt", "score"),
        # SQLite: rows live in the primary key's B-tree, so a day's rows are contiguous and there is
        # no separate rowid tree to maintain. Ignored by PostgreSQL.
        sqlite_with_rowid=False,
    )
    input_types = {
        id_column: pa.string(),
        "score": pa.float64(),  # float32 scores widen exactly; both backends store them as double
        "label": pa.int16(),
        "model_name": pa.string(),
        "model_version": pa.string(),
        **{name: arrow_type for (name, _), (_, arrow_type, _) in zip(business, stored, strict=True)},
    }
    sqlite_columns = (
        (id_column, "TEXT NOT NULL PRIMARY KEY"),
        ("score", "REAL NOT NULL"),
        ("label", "INTEGER NOT NULL"),
        ("model_name", "TEXT"),
        ("model_version", "TEXT NOT NULL"),
        *((name, declared) for (name, _), (_, _, declared) in zip(business, stored, strict=True)),
        ("scoring_run_id", "INTEGER"),
    )
    return _Layout(domain, id_column, table, input_types, sqlite_columns)


def _stored_type(
    domain: str, column: str, type_: pa.DataType, lengths: dict[str, int]
) -> tuple[sa.types.TypeEngine, pa.DataType, str]:
    """How a business column is stored: its SQL type, the Arrow type it is loaded as, its SQLite declaration."""
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return sa.String(lengths.get(column, _TEXT_LENGTH)), pa.string(), "TEXT"
    if pa.types.is_timestamp(type_):
        return UtcDateTime(), pa.timestamp("us", tz="UTC"), "TEXT"
    if pa.types.is_floating(type_):
        return sa.Float(), pa.float64(), "REAL"
    if pa.types.is_integer(type_):
        return sa.BigInteger(), pa.int64(), "INTEGER"
    if pa.types.is_boolean(type_):
        return sa.Boolean(), pa.bool_(), "INTEGER"
    raise ValueError(
        f"domain {domain!r}: business column {column!r} of type {type_} cannot be published to the prediction"
        " database (string, timestamp, floating point, integer and boolean columns can)"
    )


def predictions_table(domain: Domain) -> sa.Table:
    """Table `predictions` as the domain publishes it (PostgreSQL's table; SQLite's view reads back the same)."""
    return _layout(domain).table


def published_text_lengths(domain: Domain) -> dict[str, int]:
    """The most characters the database holds in the domain's id and text business columns, by column."""
    table = _layout(domain).table
    names = (domain.id_column, *domain.business_columns)
    return {name: table.c[name].type.length for name in names if isinstance(table.c[name].type, sa.String)}


_DAY_KEY = re.compile(r"\d{4}-\d{2}-\d{2}")

_COPY_CHUNK_ROWS = 65_536
# An unreachable host (dropped packets) would otherwise hang a run for the OS's TCP timeout.
_PG_CONNECT_TIMEOUT_S = 15
# A publish holds SQLite's write lock for seconds; another writer waits this long before failing.
_SQLITE_BUSY_TIMEOUT_S = 120
# Per connection, grown only as used. A day's table is appended in rowid order and indexed once loaded, so a big
# cache buys nothing: measured (benchmarks/publish_memory.py's day, chunks of 1M rows), 256 MiB against 16 MiB took
# 3.2 / 2.7 s and peaked 758 / 603 MiB for 1M rows, 20.4 / 16.0 s and 1,242 / 909 MiB for 5M rows.
_SQLITE_CACHE_KIB = 16 * 1024
_SQLITE_JOURNAL_MODE = "WAL"
_SQLITE_WAL_LIMIT_BYTES = 64 * 1024 * 1024
_SCHEMA_LOCK_KEY = zlib.crc32(b"batchinfer:predictions:schema")


# The columns every domain's table has that reading what is published needs.
_PUBLISHED = sa.table(PREDICTIONS_TABLE, sa.column("dt"), sa.column("scoring_run_id"))


class PredictionDatabaseConnectionError(ConnectionError):
    """The prediction database could not be reached or refused the login."""


class PredictionsRefusedError(ValueError):
    """The day's rows cannot be published as they are (a missing column, a null or repeated id); nothing was written."""


class PredictionDatabaseResource(dg.ConfigurableResource):
    """Publishes a day's predictions to a SQL database, replacing that day's rows in one transaction."""

    url: str = Field(description="SQLAlchemy URL of the prediction database (sqlite:/// or postgresql+psycopg://).")

    _engine: sa.Engine | None = PrivateAttr(default=None)
    # Layouts whose table this resource has created or checked (once per domain and resource).
    _ready: set[int] = PrivateAttr(default_factory=set)

    def safe_url(self) -> str:
        """The URL with any password masked, for logs and metadata."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def _is_postgres(self) -> bool:
        return sa.make_url(self.url).get_backend_name() == "postgresql"

    def _sqlite_path(self) -> str:
        """The SQLite database's file; an in-memory database is refused (no downstream app could read it)."""
        database = sa.make_url(self.url).database
        if database in (None, "", ":memory:") or database.startswith("file::memory:"):
            raise ValueError(
                f"prediction database {self.safe_url()} is in memory: downstream apps could not query it and it would "
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
        """A pooled engine, created on first use (creating or upgrading table `scoring_runs`) and reused for the run."""
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
                f"cannot connect to the prediction database ({self._where()}): {str(exc.orig).strip()}"
            ) from None
        with conn:
            conn = conn.execution_options(batchinfer_sqlite_begin=sqlite_begin)
            with conn.begin():
                yield conn

    def ensure_schema(self, *, domain: Domain) -> None:
        """Create table `predictions` for the domain, or bring one an earlier version created up to date.

        Done by the first publication otherwise. Refused when the table holds another domain's predictions.
        """
        layout = _layout(domain)
        engine = self.engine
        if id(layout) in self._ready:
            return
        with self._begin(engine, sqlite_begin="BEGIN IMMEDIATE") as conn:
            if self._is_postgres():
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
            _ensure_predictions(conn, layout, self._where())
        self._ready.add(id(layout))

    def replace_partition(
        self,
        dt: str,
        rows: pa.Table | Iterable[pa.Table],
        scoring_run: Mapping[str, Any] | None = None,
        *,
        domain: Domain,
    ) -> int:
        """Delete the day's rows and insert `rows` atomically; returns rows written.

        `rows` (one table, or the day's chunks, loaded one at a time in one transaction) holds the domain's id
        column, score, label, model_name, model_version and the domain's business columns (more columns are
        ignored). `scoring_run` (the SCORING_RUN_FIELDS of the scoring that produced them) is recorded in
        `scoring_runs` in the same transaction and each row links to it. Nothing is written, and the day's
        previous rows are kept, when a column is missing, an id is null or repeated (within a chunk or across
        chunks), or a value cannot be stored.
        """
        layout = _layout(domain)
        chunks = _prepared_chunks(dt, rows, layout)
        # The first chunk is refused before the database is touched (a day of one table: everything is).
        loaded = _resumed(next(chunks, None), chunks)
        if scoring_run is not None:
            missing = [name for name in SCORING_RUN_FIELDS if name not in scoring_run]
            if missing:
                raise PredictionsRefusedError(f"scoring run of {dt} lacks {missing}: nothing was published")
        # Creates or upgrades the tables first (on SQLite through sqlite3; closed again).
        self.ensure_schema(domain=domain)
        if not self._is_postgres():
            dialect = self.engine.dialect
            try:
                return _replace_sqlite_day(self._sqlite_path(), dt, loaded, scoring_run, layout)
            except _adbc_error() as exc:
                # Raise what SQLAlchemy raises for the same failure, so callers and the retry policy see one kind.
                raise sa.exc.DBAPIError.instance(
                    f"bulk load into {PREDICTIONS_TABLE} for {dt}", None, exc, _adbc_error(), dialect=dialect
                ) from exc
        written = 0
        with self._begin(self.engine) as conn:
            # Two runs replacing the same day would interleave their deletes and inserts and collide.
            day_lock = zlib.crc32(f"batchinfer:predictions:{dt}".encode())
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(day_lock)))
            conn.execute(sa.delete(layout.table).where(layout.table.c.dt == dt))
            run_id = None if scoring_run is None else _record_scoring_run(conn, dt, scoring_run)
            for number, table in enumerate(loaded, start=1):
                # A savepoint per chunk: after a repeated id the transaction can still say which.
                savepoint = conn.begin_nested()
                try:
                    _copy_csv(conn, dt, table, run_id)
                except conn.dialect.loaded_dbapi.Error as exc:
                    if isinstance(exc, conn.dialect.loaded_dbapi.IntegrityError):
                        savepoint.rollback()
                        _refuse_repeated_across_chunks(dt, number, *_pg_repeated(conn, dt, table, layout), layout)
                    # The load runs on the driver's own cursor; raise what SQLAlchemy would have raised.
                    raise sa.exc.DBAPIError.instance(
                        f"bulk load into {PREDICTIONS_TABLE} for {dt}", None, exc, conn.dialect.loaded_dbapi.Error
                    ) from exc
                savepoint.commit()
                written += table.num_rows
                del table
        return written

    def release_connections(self) -> None:
        """Close pooled connections (the next call opens new ones, with the same settings).

        A pooled SQLite connection keeps its page cache (up to the configured size) after a day is published;
        a run publishing many days one after another would carry it from day to day.
        """
        if self._engine is not None:
            self._engine.dispose()

    def published_snapshot_hashes(self) -> set[str]:
        """The input snapshot hashes behind the rows published now (one scoring run per published day)."""
        runs, rows = scoring_runs_table, _PUBLISHED
        days = sa.select(runs.c.dt).distinct().subquery()
        current = sa.select(rows.c.scoring_run_id).where(rows.c.dt == days.c.dt).limit(1).scalar_subquery()
        query = sa.select(runs.c.input_snapshot_hash).where(runs.c.id.in_(sa.select(current).select_from(days))).distinct()
        with self._begin(self.engine) as conn:
            if not sa.inspect(conn).has_table(PREDICTIONS_TABLE):
                return set()
            return set(conn.execute(query).scalars())

    def count_partition(self, dt: str) -> int:
        """Rows currently published for the day."""
        with self._begin(self.engine) as conn:
            if not sa.inspect(conn).has_table(PREDICTIONS_TABLE):
                return 0  # nothing published yet
            return conn.execute(
                sa.select(sa.func.count()).select_from(_PUBLISHED).where(_PUBLISHED.c.dt == dt)
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
    """Create table `scoring_runs`, or bring the one an earlier version created up to date."""
    inspector = sa.inspect(conn)
    scoring_runs_table.create(conn, checkfirst=True)
    _widen_string_columns(conn, inspector, scoring_runs_table)


def _ensure_predictions(conn: sa.Connection, layout: _Layout, where: str) -> None:
    """Create table `predictions` for the layout, or bring one an earlier version created up to date: add columns and
    indexes (PostgreSQL), split the single table into day tables (SQLite). Another domain's table is refused."""
    if conn.dialect.name == "sqlite":
        _ensure_sqlite_schema(conn, layout, where)
        return
    inspector = sa.inspect(conn)
    table = layout.table
    if not inspector.has_table(PREDICTIONS_TABLE):
        table.create(conn)
        return
    key = [name for name in inspector.get_pk_constraint(PREDICTIONS_TABLE)["constrained_columns"] if name != "dt"]
    _refuse_other_domain(key, layout, where)
    present = {column["name"] for column in inspector.get_columns(PREDICTIONS_TABLE)}
    preparer = conn.dialect.identifier_preparer
    for column in table.columns:
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
    for index in table.indexes:
        if index.name not in indexes:
            index.create(conn)


def _refuse_other_domain(key: list[str], layout: _Layout, where: str) -> None:
    """Refuse a `predictions` table keyed by another column than the domain's id: another domain's predictions."""
    if key != [layout.id_column]:
        shown = ", ".join(repr(name) for name in key) or "nothing"
        raise PredictionsRefusedError(
            f"table {PREDICTIONS_TABLE} in the prediction database ({where}) is keyed by {shown} (besides dt), but"
            f" domain {layout.domain!r} identifies its rows by {layout.id_column!r}: a prediction database holds one"
            " domain's predictions; nothing was published. Set BATCHINFER_PREDICTIONS_DB_URL to another database for"
            " this domain"
        )


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


_REFUSED = "nothing was published, the day's previous rows are kept"


def _prepared_chunks(dt: str, rows: pa.Table | Iterable[pa.Table], layout: _Layout) -> Iterator[pa.Table]:
    """Each chunk of the day's rows prepared for loading (`_prepare`), as the caller's iterable produces them."""
    if isinstance(rows, (pa.Table, pa.RecordBatch)):
        rows = (rows,)
    elif not isinstance(rows, Iterable):
        raise TypeError(f"predictions for {dt} must be a pyarrow.Table or an iterable of them, got {type(rows).__name__}")
    for chunk in rows:
        yield _prepare(dt, chunk, layout)


def _resumed(first: pa.Table | None, rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """`first` (when there is one) and then `rest`."""
    if first is not None:
        yield first
        del first  # the loader holds one chunk at a time
    yield from rest


def _refuse_repeated_across_chunks(dt: str, number: int, count: int, example: str | None, layout: _Layout) -> None:
    """Refuse a chunk whose ids an earlier chunk of the day holds (found by the database's unique key)."""
    if count:
        raise PredictionsRefusedError(
            f"predictions for {dt} repeat {count} {layout.id_column}(s), e.g. {example!r} (chunk {number} of the"
            f" day's rows repeats ids of earlier chunks): {_REFUSED}"
        )


def _pg_repeated(conn: sa.Connection, dt: str, table: pa.Table, layout: _Layout) -> tuple[int, str | None]:
    """How many of the chunk's ids the day's rows loaded so far hold, and the least of them."""
    column = layout.table.c[layout.id_column]
    query = sa.select(sa.func.count(), sa.func.min(column)).where(
        layout.table.c.dt == dt, column == sa.any_(sa.bindparam("ids", type_=sa.ARRAY(sa.String)))
    )
    count, example = conn.execute(query, {"ids": table.column(layout.id_column).to_pylist()}).one()
    return int(count), example


def _prepare(dt: str, rows: pa.Table, layout: _Layout) -> pa.Table:
    """The input columns in their storage types, sorted by the id; refuses what cannot be published."""
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    if not isinstance(rows, pa.Table):
        raise TypeError(f"predictions for {dt} must be a pyarrow.Table, got {type(rows).__name__}")
    refused = _REFUSED
    missing = [name for name in layout.input_types if name not in rows.column_names]
    if missing:
        raise PredictionsRefusedError(
            f"predictions for {dt} lack column(s) {', '.join(repr(name) for name in missing)}: {refused}"
        )
    columns = {}
    for name, target in layout.input_types.items():
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

    id_column = layout.id_column
    ids = table.column(id_column)
    for name in (id_column, "score", "label", "model_version"):
        nulls = table.column(name).null_count
        if nulls:
            raise PredictionsRefusedError(f"predictions for {dt} have {nulls} null {name}(s): {refused}")
    if len(ids) > 1 and pc.any(pc.less(ids[1:], ids[:-1])).as_py():
        table = table.take(pc.sort_indices(ids))
        ids = table.column(id_column)
    # Sorted: a repeated id sits next to itself. Counted (for the message) only when there is one.
    if len(ids) > 1 and pc.any(pc.equal(ids[1:], ids[:-1])).as_py():
        counts = pc.value_counts(rows.column(id_column))
        repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        raise PredictionsRefusedError(
            f"predictions for {dt} repeat {len(repeated)} {id_column}(s), e.g. {repeated[0].as_py()!r}: {refused}"
        )
    _refuse_unstorable(dt, table, refused, layout)
    return table


def _refuse_unstorable(dt: str, table: pa.Table, refused: str, layout: _Layout) -> None:
    """Refuse text the table cannot hold (over the column's length, or with a NUL), naming the column and the first id.

    Checked on every backend: SQLite would store both, PostgreSQL would fail the whole COPY without naming either.
    """
    ids = table.column(layout.id_column)
    for name, target in layout.input_types.items():
        if target != pa.string():
            continue
        column = table.column(name)
        length = layout.table.c[name].type.length
        problems = [(pc.match_substring(column, "\x00"), "hold a NUL character, which PostgreSQL text cannot store")]
        if length is not None:
            problems.insert(0, (pc.greater(pc.utf8_length(column), length), f"are longer than the {length} characters the column holds"))
        for mask, what in problems:
            count = pc.sum(mask).as_py() or 0
            if count:
                first = ids[pc.index(mask, True).as_py()].as_py()
                shown = repr(first) if len(first) <= 64 else f"{first[:64]!r}... ({len(first)} characters)"
                raise PredictionsRefusedError(
                    f"predictions for {dt}: {count} {name} value(s) {what}, first at {layout.id_column} {shown}:"
                    f" {refused}"
                )


def _adbc_error() -> type[Exception]:
    from adbc_driver_manager import Error

    return Error


def _day_table(dt: str) -> str:
    """The SQLite table holding the day's rows (`dt` checked to be a day, so the name needs no quoting)."""
    return _SQLITE_DAY_PREFIX + dt.replace("-", "")


def _sqlite_day_ddl(name: str, layout: _Layout) -> str:
    columns = ", ".join(f"{_SQLITE_QUOTE(column)} {declared}" for column, declared in layout.sqlite_columns)
    return f"CREATE TABLE {name} ({columns}) WITHOUT ROWID"


def _sqlite_day_index(name: str) -> str:
    return f"CREATE INDEX {name}_score ON {name} (score)"


def _sqlite_views(day_tables: Mapping[str, set[str]], layout: _Layout) -> list[str]:
    """DDL that (re)creates the `predictions` view over the days' tables (name -> its columns), through one view per
    year; a column a day's table lacks (published before the domain gained it) reads as null.

    A compound SELECT takes at most 500 terms in SQLite; a year has at most 366 days, and SQLite flattens the
    nested views so queries still reach each day's indexes.
    """
    names = [_SQLITE_QUOTE(column) for column, _ in layout.sqlite_columns]
    columns = ", ".join(names)
    by_year: dict[str, list[str]] = {}
    for name in sorted(day_tables):
        by_year.setdefault(name[len(_SQLITE_DAY_PREFIX):][:4], []).append(name)
    statements = [f"DROP VIEW IF EXISTS {PREDICTIONS_TABLE}"]
    years = []
    for year, tables in by_year.items():
        view = f"{_SQLITE_YEAR_PREFIX}{year}"
        arms = " UNION ALL ".join(
            f"SELECT '{_day_of(name)}' AS dt, {_selected(layout, day_tables[name])} FROM {name}" for name in tables
        )
        statements += [f"DROP VIEW IF EXISTS {view}", f"CREATE VIEW {view} AS {arms}"]
        years.append(view)
    if years:
        body = " UNION ALL ".join(f"SELECT dt, {columns} FROM {view}" for view in years)
    else:  # nothing published yet: the columns, no rows
        nulls = ", ".join(
            f"CAST(NULL AS {declared.split()[0]}) AS {quoted}"
            for quoted, (_, declared) in zip(names, layout.sqlite_columns, strict=True)
        )
        body = f"SELECT CAST(NULL AS TEXT) AS dt, {nulls} WHERE 0"
    return [*statements, f"CREATE VIEW {PREDICTIONS_TABLE} AS {body}"]


def _selected(layout: _Layout, present: set[str]) -> str:
    """The layout's day-table columns as a SELECT list, null for those `present` lacks."""
    quoted = [(column, _SQLITE_QUOTE(column)) for column, _ in layout.sqlite_columns]
    return ", ".join(q if column in present else f"NULL AS {q}" for column, q in quoted)


def _day_of(table: str) -> str:
    digits = table[len(_SQLITE_DAY_PREFIX):]
    return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"


# Every day table's columns, as (table, column) rows.
_SQLITE_DAY_TABLE_COLUMNS = (
    "SELECT m.name, c.name FROM sqlite_schema AS m JOIN pragma_table_info(m.name) AS c"
    f" WHERE m.type = 'table' AND m.name GLOB '{_SQLITE_DAY_PREFIX}[0-9]*'"
)


def _by_table(rows: Iterable[Sequence[str]]) -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    for table, column in rows:
        tables.setdefault(table, set()).add(column)
    return tables


def _ensure_sqlite_schema(conn: sa.Connection, layout: _Layout, where: str) -> None:
    """The `predictions` view over the day tables with the layout's columns; a `predictions` table of an earlier
    version is split into them. Another domain's view or table is refused."""
    kind = conn.exec_driver_sql("SELECT type FROM sqlite_schema WHERE name = ?", (PREDICTIONS_TABLE,)).scalar()
    # cid, name, type, notnull, default, pk (the column's place in the primary key; 0: not in it)
    info = conn.exec_driver_sql(f"PRAGMA table_info({PREDICTIONS_TABLE})").all()
    if kind == "view":
        # The view's columns are dt, then the key.
        _refuse_other_domain([row[1] for row in info[1:2]], layout, where)
        if [row[1] for row in info] == ["dt", *(column for column, _ in layout.sqlite_columns)]:
            return
    if kind == "table":
        key = [row[1] for row in sorted(info, key=lambda row: row[5]) if row[5] and row[1] != "dt"]
        _refuse_other_domain(key, layout, where)
        selected = _selected(layout, {row[1] for row in info})
        days = conn.exec_driver_sql(f"SELECT DISTINCT dt FROM {PREDICTIONS_TABLE} ORDER BY dt").scalars().all()
        for day in days:
            name = _day_table(_checked_day(day))
            conn.exec_driver_sql(_sqlite_day_ddl(name, layout))
            conn.exec_driver_sql(
                f"INSERT INTO {name} SELECT {selected} FROM {PREDICTIONS_TABLE} WHERE dt = ?"
                f" ORDER BY {_SQLITE_QUOTE(layout.id_column)}",
                (day,),
            )
            conn.exec_driver_sql(_sqlite_day_index(name))
        conn.exec_driver_sql(f"DROP TABLE {PREDICTIONS_TABLE}")
    day_tables = _by_table(conn.exec_driver_sql(_SQLITE_DAY_TABLE_COLUMNS).all())
    for statement in _sqlite_views(day_tables, layout):
        conn.exec_driver_sql(statement)


def _checked_day(dt: str) -> str:
    if not isinstance(dt, str) or not _DAY_KEY.fullmatch(dt):
        raise PredictionsRefusedError(f"partition {dt!r} is not a day (YYYY-MM-DD): nothing was published")
    dt_.date.fromisoformat(dt)
    return dt


def _replace_sqlite_day(
    path: str, dt: str, chunks: Iterable[pa.Table], scoring_run: Mapping[str, Any] | None, layout: _Layout
) -> int:
    """Replace the day's table in one transaction: drop it, create it, load it from Arrow chunk by chunk, index it;
    returns rows written."""
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
            cursor.execute("SELECT name FROM pragma_table_info(?)", (name,))
            previous = {row[0] for row in cursor.fetchall()}  # empty: a new day
            cursor.execute(f"DROP TABLE IF EXISTS {name}")
            cursor.execute(_sqlite_day_ddl(name, layout))
            written = 0
            for number, table in enumerate(chunks, start=1):
                # A savepoint per chunk: after a repeated id the transaction can still say which.
                cursor.execute("SAVEPOINT chunk")
                try:
                    cursor.adbc_ingest(name, _sqlite_rows(table, run_id, layout), mode="append")
                except _adbc_error():
                    # The driver reports a broken unique key as an internal error: ask the table whether it was one.
                    with suppress(_adbc_error()):
                        cursor.execute("ROLLBACK TO chunk")
                        _refuse_repeated_across_chunks(dt, number, *_sqlite_repeated(cursor, name, table, layout), layout)
                    raise
                cursor.execute("RELEASE chunk")
                written += table.num_rows
                del table
            _index_day_table(cursor, name)
            # The views name every day's table and its columns: a new day, or a day of other columns, redoes them.
            if previous != {column for column, _ in layout.sqlite_columns}:
                cursor.execute(_SQLITE_DAY_TABLE_COLUMNS)
                for statement in _sqlite_views(_by_table(cursor.fetchall()), layout):
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
    return written


def _sqlite_repeated(cursor: Any, name: str, table: pa.Table, layout: _Layout) -> tuple[int, str | None]:
    """How many of the chunk's ids the day's table holds so far, and the least of them."""
    column = _SQLITE_QUOTE(layout.id_column)
    cursor.execute(
        f"SELECT count(*), min({column}) FROM {name} WHERE {column} IN (SELECT value FROM json_each(?))",
        pa.table({"ids": [json.dumps(table.column(layout.id_column).to_pylist())]}),
    )
    count, example = cursor.fetchall()[0]
    return int(count), example


def _index_day_table(cursor: Any, name: str) -> None:
    """The day's score index, built once the rows are in (a sort, instead of entry by entry in random order)."""
    cursor.execute(_sqlite_day_index(name))


def _sqlite_rows(table: pa.Table, scoring_run_id: int | None, layout: _Layout) -> pa.Table:
    """The day's rows as the day table stores them: timestamps as UTC ISO text, booleans as 0/1, the scoring run."""
    columns = {"scoring_run_id": pa.repeat(pa.scalar(scoring_run_id, pa.int64()), table.num_rows)}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            # Arrow formats naive (UTC wall clock) timestamps fast; zoned ones go through tz lookups.
            text = pc.cast(pc.cast(column, pa.timestamp("us")), pa.string())
            column = pc.binary_join_element_wise(text, "+00:00", "")
        elif pa.types.is_boolean(column.type):
            column = pc.cast(column, pa.int64())
        columns[name] = column
    return pa.table({name: columns[name] for name, _ in layout.sqlite_columns})


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
        name: table.column(name) for name in table.column_names
    }})
    columns = ", ".join(conn.dialect.identifier_preparer.quote(name) for name in table.column_names)
    sql = f"COPY {PREDICTIONS_TABLE} ({columns}) FROM STDIN WITH (FORMAT csv, ENCODING 'UTF8')"
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
