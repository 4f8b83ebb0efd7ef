"""Training rows from the same code that serves: each landed day's valid rows, their features and their labels.

    python -m batchinfer_assets.training_set START END OUT.parquet

For each day of the landing zone from START to END (inclusive), the rows the pipeline would score (the domain's
row rules and the pipeline's own applied, quarantined rows left out), featurized by the domain's feature function,
with the domain's label where one is known by now (null otherwise). Written one day at a time, so memory holds one
day whatever the range. The settings are the pipeline's (`BATCHINFER_DOMAIN`, `BATCHINFER_LANDING_URI`,
`BATCHINFER_LABELS_URI`, ...): without a landing zone, the domain's synthetic source.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchinfer_assets.domain import Domain
from batchinfer_assets.lib.landing import LandingDataError
from batchinfer_assets.resources.labels_zone import LabelsResource
from batchinfer_assets.resources.landing_zone import LandingZoneResource
from batchinfer_assets.resources.prediction_db import published_text_lengths
from batchinfer_assets.schemas import split_valid_rows

DT_COLUMN = "dt"


@dataclass
class TrainingSetSummary:
    """What a training set holds."""

    days: list[str] = field(default_factory=list)
    missing_days: list[str] = field(default_factory=list)
    rows: int = 0
    quarantined: int = 0
    labelled: int = 0
    positives: int = 0


def training_schema(domain: Domain) -> pa.Schema:
    """Columns of a training set: the id, the day, every feature (float32) and the label (nullable int8)."""
    return pa.schema(
        [
            (domain.id_column, pa.string()),
            (DT_COLUMN, pa.string()),
            *[(feature, pa.float32()) for feature in domain.feature_columns],
            (domain.label_column, pa.int8()),
        ]
    )


def training_day(domain: Domain, landing_zone: LandingZoneResource, labels: LabelsResource, day: dt.date) -> tuple[pa.Table, int]:
    """One day's training rows and how many of its rows were quarantined; the landing zone's error when it has none."""
    raw = landing_zone.load_day(day, domain)
    valid, quarantined = split_valid_rows(raw, day, domain, published_text_lengths(domain))
    features = domain.feature_frame(valid, day.isoformat())
    known = labels.labels_for(day, domain).labels
    label = (
        features[[domain.id_column]]
        .merge(known[[domain.id_column, domain.label_column]], on=domain.id_column, how="left")[domain.label_column]
        .astype("Int8")
    )
    schema = training_schema(domain)
    columns = [
        pa.array(features[domain.id_column].astype("string"), pa.string()),
        pa.array(np.full(len(features), day.isoformat(), dtype=object), pa.string()),
        *[pa.array(features[c].to_numpy(dtype=np.float32), pa.float32()) for c in domain.feature_columns],
        pa.array(label, pa.int8(), from_pandas=True),
    ]
    return pa.Table.from_arrays(columns, schema=schema), len(quarantined)


def training_days(
    domain: Domain, landing_zone: LandingZoneResource, labels: LabelsResource, start: dt.date, end: dt.date, summary: TrainingSetSummary
) -> Iterator[pa.Table]:
    """Each landed day's training rows from `start` to `end`; days without landing data are noted in `summary`."""
    day = start
    while day <= end:
        try:
            table, quarantined = training_day(domain, landing_zone, labels, day)
        except LandingDataError as error:
            if "no landing data" not in str(error):
                raise
            summary.missing_days.append(day.isoformat())
        else:
            summary.days.append(day.isoformat())
            summary.rows += table.num_rows
            summary.quarantined += quarantined
            label = table.column(domain.label_column)
            summary.labelled += len(label) - label.null_count
            summary.positives += int(pc.sum(label).as_py() or 0)
            yield table
        day += dt.timedelta(days=1)


def write_training_set(
    domain: Domain, landing_zone: LandingZoneResource, labels: LabelsResource, start: dt.date, end: dt.date, out: Path
) -> TrainingSetSummary:
    """Write the training rows of `start`..`end` to `out` (one Parquet file, written whole or not at all)."""
    if end < start:
        raise ValueError(f"END {end} is before START {start}")
    summary = TrainingSetSummary()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with pq.ParquetWriter(partial, training_schema(domain)) as writer:
            for table in training_days(domain, landing_zone, labels, start, end, summary):
                writer.write_table(table)
        if not summary.days:
            raise LandingDataError(f"no landing data for any day from {start} to {end}: nothing written")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return summary


def read_training_set(path: Path | str, domain: Domain, *, labelled_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(features as float32 matrix in the domain's feature order, labels) of a training set file."""
    table = pq.read_table(path, columns=[*domain.feature_columns, domain.label_column])
    if labelled_only:
        table = table.filter(pc.is_valid(table.column(domain.label_column)))
    x = np.column_stack([table.column(c).to_numpy() for c in domain.feature_columns]).astype(np.float32, copy=False)
    return np.ascontiguousarray(x), table.column(domain.label_column).to_numpy(zero_copy_only=False).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    from batchinfer_assets.project import build_resources
    from batchinfer_assets.domain import load_domain
    from batchinfer_assets.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m batchinfer_assets.training_set", description=__doc__.split("\n\n")[0])
    parser.add_argument("start", type=dt.date.fromisoformat, help="first day, YYYY-MM-DD")
    parser.add_argument("end", type=dt.date.fromisoformat, help="last day (inclusive), YYYY-MM-DD")
    parser.add_argument("out", type=Path, help="the Parquet file to write")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        domain = load_domain(settings.domain)
        resources = build_resources(settings)
        summary = write_training_set(domain, resources["landing_zone"], resources["labels"], args.start, args.end, args.out)
    except (ValueError, OSError) as error:
        print(f"training_set: {error}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {summary.rows:,} rows of {len(summary.days)} day(s) of the {domain.name} domain "
        f"({summary.quarantined:,} quarantined rows left out), {summary.labelled:,} labelled, "
        f"{summary.positives:,} with {domain.label_column}=1"
    )
    if summary.missing_days:
        print(f"no landing data for {len(summary.missing_days)} day(s): {', '.join(summary.missing_days)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
