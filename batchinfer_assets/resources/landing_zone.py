"""Landing zones: where a day's raw rows come from, in the columns the domain declares."""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Optional

import dagster as dg
import pandas as pd
from dagster_aws.s3 import S3Resource
from pydantic import Field

from batchinfer_assets.domain import DEFAULT_SEED, Domain
from batchinfer_assets.lib.landing import LandingDataError, conform_landing_frame, iter_landing_day, read_landing_day
from batchinfer_assets.lib.parquet_store import is_s3_uri
from batchinfer_assets.resources.table_storage import S3_FIELD_DESCRIPTION


class LandingZoneResource(dg.ConfigurableResource, ABC):
    """A source of one day of rows in the domain's landing columns."""

    allow_empty_days: bool = Field(
        default=False, description="Accept a day with zero rows instead of failing it."
    )

    @abstractmethod
    def location(self, day: dt.date) -> str:
        """Where the day's data is read from, for messages and metadata."""

    @abstractmethod
    def _read_day(self, day: dt.date, domain: Domain) -> pd.DataFrame:
        """The day's rows, conformed to the domain's landing columns."""

    def load_day(self, day: dt.date, domain: Domain) -> pd.DataFrame:
        """The day's rows; an empty day is an error unless allowed."""
        frame = self._read_day(day, domain)
        if frame.empty and not self.allow_empty_days:
            raise LandingDataError(
                f"landing data for {day.isoformat()} at {self.location(day)} has no rows "
                "(set allow_empty_days on the landing zone resource to accept empty days)"
            )
        return frame

    def iter_day(self, day: dt.date, domain: Domain, batch_rows: int) -> Iterator[pd.DataFrame]:
        """The day's rows in pieces of at most about `batch_rows` rows, in the order `load_day` returns them."""
        frame = self.load_day(day, domain)
        for offset in range(0, max(len(frame), 1), batch_rows):
            yield frame.iloc[offset : offset + batch_rows]


class SyntheticLandingZoneResource(LandingZoneResource):
    """The domain's built-in deterministic generator (its `synthetic` source): the same rows for the same day everywhere."""

    rows_per_day: int = Field(default=20_000, gt=0, description="Rows generated per day.")
    seed: int = Field(default=DEFAULT_SEED, description="Seed of the customer population and every day's draw.")

    def location(self, day: dt.date) -> str:
        return f"synthetic://seed={self.seed}/rows={self.rows_per_day}/dt={day.isoformat()}"

    def _read_day(self, day: dt.date, domain: Domain) -> pd.DataFrame:
        if domain.synthetic is None:
            raise LandingDataError(
                f"domain {domain.name!r} has no synthetic source: set BATCHINFER_LANDING_URI to its landing zone"
            )
        frame = domain.synthetic.generate_day(day, self.rows_per_day, self.seed)
        return conform_landing_frame(frame, source=self.location(day), columns=domain.landing_columns)


class ParquetLandingZoneResource(LandingZoneResource):
    """Parquet files under `{uri}/dt={YYYY-MM-DD}/`, as an upstream system lands them."""

    uri: str = Field(description="Root of the landing zone: a local folder or s3://bucket/prefix.")
    s3: Optional[S3Resource] = Field(default=None, description=S3_FIELD_DESCRIPTION)

    def location(self, day: dt.date) -> str:
        return f"{self.uri.rstrip('/')}/dt={day.isoformat()}/"

    def _read_day(self, day: dt.date, domain: Domain) -> pd.DataFrame:
        client = (self.s3 or S3Resource()).get_client() if is_s3_uri(self.uri) else None
        return read_landing_day(self.uri, day, domain.landing_columns, s3_client=client)

    def iter_day(self, day: dt.date, domain: Domain, batch_rows: int) -> Iterator[pd.DataFrame]:
        """File by file, a big file in pieces: memory holds one piece, whatever the day's size."""
        client = (self.s3 or S3Resource()).get_client() if is_s3_uri(self.uri) else None
        pieces = iter_landing_day(self.uri, day, domain.landing_columns, s3_client=client, batch_rows=batch_rows)
        rows = 0
        for piece in pieces:
            rows += len(piece)
            if rows == 0 and not self.allow_empty_days:
                continue
            yield piece
        if rows == 0 and not self.allow_empty_days:
            raise LandingDataError(
                f"landing data for {day.isoformat()} at {self.location(day)} has no rows "
                "(set allow_empty_days on the landing zone resource to accept empty days)"
            )
