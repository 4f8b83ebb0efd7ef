"""The prediction database downstream apps query."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

PREDICTIONS_TABLE = "predictions"

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
    sa.Index("ix_predictions_dt", "dt"),
)
_COLUMNS = tuple(c.name for c in predictions_table.columns)

_INSERT_CHUNK = 50_000
# An unreachable host (dropped packets) would otherwise hang a run for the OS's TCP timeout.
_PG_CONNECT_TIMEOUT_S = 15
_SCHEMA_LOCK_KEY = zlib.crc32(b"batchinfer:predictions:schema")


class PredictionDatabaseConnectionError(ConnectionError):
    """The prediction database could not be reached or refused the login."""


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
        """A pooled engine, created on first use (with the table if missing) and reused for the run."""
        if self._engine is None:
            url = sa.make_url(self.url)
            connect_args: dict[str, object] = {}
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
                connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
            engine = sa.create_engine(url, connect_args=connect_args)
            with self._begin(engine) as conn:
                if self._is_postgres():
                    # Runs publishing at the same time would otherwise race to create the table.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
                _metadata.create_all(conn)
            self._engine = engine
        return self._engine

    @contextmanager
    def _begin(self, engine: sa.Engine) -> Iterator[sa.Connection]:
        """A transaction; a failure to connect becomes an error naming the database, host and port."""
        try:
            conn = engine.connect()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise PredictionDatabaseConnectionError(
                f"cannot connect to the prediction database ({self._where()}): {str(exc.orig).strip()}"
            ) from None
        with conn, conn.begin():
            yield conn

    def replace_partition(self, dt: str, predictions: pd.DataFrame) -> int:
        """Delete the day's rows and insert `predictions` atomically; returns rows written."""
        duplicated = predictions["transaction_id"][predictions["transaction_id"].duplicated()]
        if not duplicated.empty:
            raise ValueError(
                f"predictions for {dt} repeat {duplicated.nunique()} transaction_id(s), e.g. {duplicated.iloc[0]!r}:"
                f" nothing was published, the day's previous rows are kept"
            )
        rows = list(
            zip(
                [dt] * len(predictions),
                predictions["transaction_id"].astype(str).tolist(),
                predictions["score"].astype(float).tolist(),
                predictions["label"].astype(int).tolist(),
                _nullable_strings(predictions["model_name"]),
                predictions["model_version"].astype(str).tolist(),
                strict=True,
            )
        )
        with self._begin(self.engine) as conn:
            if self._is_postgres():
                # Two runs replacing the same day would interleave their deletes and inserts and collide.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(zlib.crc32(f"batchinfer:predictions:{dt}".encode()))))
            conn.execute(sa.delete(predictions_table).where(predictions_table.c.dt == dt))
            if sa.make_url(self.url).get_driver_name() == "psycopg":
                _copy_rows(conn, rows)
            else:
                records = [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
                for start in range(0, len(records), _INSERT_CHUNK):
                    conn.execute(sa.insert(predictions_table), records[start : start + _INSERT_CHUNK])
        return len(rows)

    def count_partition(self, dt: str) -> int:
        """Rows currently published for the day."""
        with self._begin(self.engine) as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(predictions_table).where(predictions_table.c.dt == dt)
            ).scalar_one()


def _nullable_strings(column: pd.Series) -> list[str | None]:
    """Strings with missing values as None: pandas' string dtype hands out NaN, which COPY would store as 'nan'."""
    return [None if pd.isna(value) else str(value) for value in column.tolist()]


def _copy_rows(conn: sa.Connection, rows: list[tuple]) -> None:
    """Bulk-load rows with PostgreSQL's COPY through psycopg 3, inside the connection's open transaction."""
    columns = ", ".join(_COLUMNS)
    with conn.connection.driver_connection.cursor() as cursor:
        with cursor.copy(f"COPY {PREDICTIONS_TABLE} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
