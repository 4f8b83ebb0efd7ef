"""The prediction database downstream apps query."""

from __future__ import annotations

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

_INSERT_CHUNK = 50_000


class PredictionDatabaseResource(dg.ConfigurableResource):
    """Publishes a day's predictions to a SQL database, replacing that day's rows in one transaction."""

    url: str = Field(description="SQLAlchemy URL of the prediction database.")

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def safe_url(self) -> str:
        """The URL with any password masked, for logs and metadata."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    @property
    def engine(self) -> sa.Engine:
        """A pooled engine, created on first use and reused for the run."""
        if self._engine is None:
            url = sa.make_url(self.url)
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            self._engine = sa.create_engine(url)
            _metadata.create_all(self._engine)
        return self._engine

    def replace_partition(self, dt: str, predictions: pd.DataFrame) -> int:
        """Delete the day's rows and insert `predictions` atomically; returns rows written."""
        rows = [
            {
                "dt": dt,
                "transaction_id": tid,
                "score": float(score),
                "label": int(label),
                "model_name": name,
                "model_version": str(version),
            }
            for tid, score, label, name, version in zip(
                predictions["transaction_id"].tolist(),
                predictions["score"].tolist(),
                predictions["label"].tolist(),
                predictions["model_name"].tolist(),
                predictions["model_version"].tolist(),
                strict=True,
            )
        ]
        with self.engine.begin() as conn:
            conn.execute(sa.delete(predictions_table).where(predictions_table.c.dt == dt))
            for start in range(0, len(rows), _INSERT_CHUNK):
                conn.execute(sa.insert(predictions_table), rows[start : start + _INSERT_CHUNK])
        return len(rows)

    def count_partition(self, dt: str) -> int:
        """Rows currently published for the day."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(predictions_table).where(predictions_table.c.dt == dt)
            ).scalar_one()
