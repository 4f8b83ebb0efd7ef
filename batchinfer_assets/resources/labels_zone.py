"""Labels zones: where the delayed truth about each day's rows comes from, and how performance is judged.

Resources hold only serializable settings; the domain (its id and label columns, its synthetic source) is passed to
each call, so one resource serves whichever domain the run declares.
"""

from __future__ import annotations

import datetime as dt
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Optional

import dagster as dg
import pandas as pd
from dagster_aws.s3 import S3Resource
from pydantic import Field

from batchinfer_assets.domain import DEFAULT_SEED
from batchinfer_assets.lib.labels import (
    DayLabels,
    conform_labels,
    files_fingerprint,
    label_files,
    latest_labels,
    read_label_files,
    read_label_pieces,
    released_by,
)
from batchinfer_assets.lib.label_buckets import SpilledLabels, gather_labels
from batchinfer_assets.lib.parquet_store import is_s3_uri
from batchinfer_assets.resources.table_storage import S3_FIELD_DESCRIPTION

if TYPE_CHECKING:
    from batchinfer_assets.domain import Domain, SyntheticSource


def no_labels(domain: Domain) -> DayLabels:
    """No labels known for a day, in the domain's columns."""
    return latest_labels([], [], id_column=domain.id_column, label_column=domain.label_column)


class LabelsResource(dg.ConfigurableResource, ABC):
    """A source of the labels known so far for one day's rows."""

    @abstractmethod
    def location(self, day: dt.date) -> str:
        """Where the day's labels are read from, for messages and metadata."""

    @abstractmethod
    def labels_for(self, day: dt.date, domain: Domain) -> DayLabels:
        """The labels known now for the day's rows of `domain`, the latest per id; none yet is not an error."""

    @abstractmethod
    def label_files_fingerprint(self, day: dt.date, domain: Domain) -> str:
        """A short string that changes whenever the day's known labels may have changed (cheap: no data read)."""

    def labels_within(self, day: dt.date, domain: Domain, chunk_rows: int, spill_dir: str | None = None) -> DayLabels | SpilledLabels:
        """The labels known now for the day, as `labels_for` gives them while they hold at most `chunk_rows` rows; past
        that, read piece by piece into `SpilledLabels` on local disk (in `spill_dir`), never whole in memory."""
        return self.labels_for(day, domain)


class SyntheticLabelsResource(LabelsResource):
    """The domain's synthetic source's own truth, each label released a deterministic delay after its row."""

    rows_per_day: int = Field(
        default=20_000, gt=0, description="Rows a day of the synthetic landing zone (must match it, so ids match)."
    )
    seed: int = Field(default=DEFAULT_SEED, description="Seed of the synthetic landing zone (must match it).")
    now: Optional[str] = Field(
        default=None,
        description=(
            "Evaluate as of this instant (ISO 8601, UTC if no zone), e.g. to replay a past morning; unset: the wall "
            "clock. Labels are released in one drop a day at 00:00 UTC."
        ),
    )

    def location(self, day: dt.date) -> str:
        return f"synthetic-labels://seed={self.seed}/rows={self.rows_per_day}/dt={day.isoformat()}"

    def as_of(self) -> pd.Timestamp:
        """The instant up to which labels count as released: the last daily drop, at 00:00 UTC.

        Labels arrive as one drop a day, as a daily labels feed would land them, so a day's known labels (and
        the sensor's fingerprint of them) change once a day rather than at every tick.
        """
        stamp = pd.Timestamp.now(tz="UTC") if self.now is None else pd.Timestamp(self.now)
        stamp = stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")
        return stamp.floor("D")

    def _released(self, day: dt.date, domain: Domain) -> pd.DataFrame:
        location = self.location(day)
        schedule = _source(domain).label_schedule(day, self.rows_per_day, self.seed)
        # The source is the domain author's code: what it released is checked as a landed file would be.
        return conform_labels(
            released_by(schedule, self.as_of(), location), location, id_column=domain.id_column, label_column=domain.label_column
        )

    def labels_for(self, day: dt.date, domain: Domain) -> DayLabels:
        released = self._released(day, domain)
        return latest_labels([released], [self.location(day)], id_column=domain.id_column, label_column=domain.label_column)

    def labels_within(self, day: dt.date, domain: Domain, chunk_rows: int, spill_dir: str | None = None) -> DayLabels | SpilledLabels:
        # The synthetic drop is made whole (it is the generator's day); past a chunk it is reduced on disk like a zone's.
        location = self.location(day)
        return gather_labels(
            [(location, self._released(day, domain))],
            id_column=domain.id_column,
            label_column=domain.label_column,
            chunk_rows=chunk_rows,
            spill_dir=spill_dir,
            sources=[location],
        )

    def label_files_fingerprint(self, day: dt.date, domain: Domain) -> str:
        # No files: the last daily drop that can have released labels for the day plays their part. It changes
        # with each drop until the longest delay has passed, and costs nothing (the sensor asks for 60 days a tick).
        last_release = day + dt.timedelta(days=math.ceil(_source(domain).max_label_delay_days) + 1)
        return f"drop={min(self.as_of().date(), last_release).isoformat()}"


def _source(domain: Domain) -> SyntheticSource:
    if domain.synthetic is None:
        raise ValueError(
            f"domain {domain.name!r} has no synthetic source, so there are no synthetic labels to release: set "
            "BATCHINFER_LABELS_URI to its labels zone (without one its days are judged on the estimate alone)"
        )
    return domain.synthetic


class ParquetLabelsResource(LabelsResource):
    """Parquet files under `{uri}/dt={YYYY-MM-DD}/` (the day of the rows they label), as the labelling system lands them."""

    uri: str = Field(description="Root of the labels zone: a local folder or s3://bucket/prefix.")
    s3: Optional[S3Resource] = Field(default=None, description=S3_FIELD_DESCRIPTION)

    def location(self, day: dt.date) -> str:
        return f"{self.uri.rstrip('/')}/dt={day.isoformat()}/"

    def _client(self):
        return (self.s3 or S3Resource()).get_client() if is_s3_uri(self.uri) else None

    def labels_for(self, day: dt.date, domain: Domain) -> DayLabels:
        return read_label_files(
            label_files(self.uri, day, s3_client=self._client()),
            id_column=domain.id_column,
            label_column=domain.label_column,
            day=day,
            now=pd.Timestamp.now(tz="UTC"),
        )

    def labels_within(self, day: dt.date, domain: Domain, chunk_rows: int, spill_dir: str | None = None) -> DayLabels | SpilledLabels:
        files = label_files(self.uri, day, s3_client=self._client())
        columns = {"id_column": domain.id_column, "label_column": domain.label_column}
        return gather_labels(
            read_label_pieces(files, **columns, batch_rows=chunk_rows),
            **columns,
            chunk_rows=chunk_rows,
            spill_dir=spill_dir,
            sources=[f.name for f in files],
            day=day,
            now=pd.Timestamp.now(tz="UTC"),
        )

    def label_files_fingerprint(self, day: dt.date, domain: Domain) -> str:
        return files_fingerprint(label_files(self.uri, day, s3_client=self._client()))


class NoLabelsResource(LabelsResource):
    """No labels zone: a real landing zone without BATCHINFER_LABELS_URI (the synthetic truth would name other ids),
    or a domain without a synthetic source.

    Every day is then evaluated on the estimate alone, and its metadata says where labels would come from.
    """

    def location(self, day: dt.date) -> str:
        return "none: set BATCHINFER_LABELS_URI to a labels zone"

    def labels_for(self, day: dt.date, domain: Domain) -> DayLabels:
        return no_labels(domain)

    def label_files_fingerprint(self, day: dt.date, domain: Domain) -> str:
        return "none"


class PerformancePolicyResource(dg.ConfigurableResource):
    """When a day's performance counts as too low: the floor below the model's own hold-out figure."""

    holdout_metric: str = Field(
        default="holdout_roc_auc",
        description="The metric of the model's MLflow run that states its hold-out ROC AUC.",
    )
    tolerance: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="How far below the hold-out ROC AUC a day may fall before the check warns: floor = holdout - tolerance.",
    )
    absolute_floor: Optional[float] = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Floor for models whose run logged no hold-out metric; unset: such models are not judged.",
    )
    min_labelled_positives: int = Field(
        default=30,
        ge=1,
        description=(
            "Labelled positives (label 1), and as many labelled negatives, a day needs before its realized ROC AUC is "
            "judged; with fewer, the estimate for the unlabelled rows is judged instead (its interval would be too "
            "wide to mean anything)."
        ),
    )
