"""A domain: everything the pipeline knows about one kind of data, declared in one object.

The pipeline's stages are generic: ingest reads `landing_columns`, validation applies `row_schema` plus the rules
every domain shares (a non-blank unique id, an event time inside the day), features come from `features`, the
snapshot holds `id_column` plus the feature columns, publishing adds `business_columns`, and labels are read from
`label_column`. `BATCHINFER_DOMAIN=module.path:attribute` selects a domain; the built-in one is card transactions.
"""

from __future__ import annotations

import importlib
import keyword
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    import datetime as dt

    import pandera.pandas as pandera

DOMAIN_VARIABLE = "BATCHINFER_DOMAIN"
BUILT_IN_DOMAIN = "batchinfer_assets.domains.card_transactions:domain"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Names the pipeline's own tables use beside the domain's columns.
_RESERVED = frozenset({"dt", "score", "label", "model_name", "model_version", "reason", "labelled_at", "scoring_run_id"})
# The seed synthetic sources draw with unless one is configured: the demo's days, labels and model.
DEFAULT_SEED = 20250101


class SyntheticSource(Protocol):
    """A deterministic generator of a domain's landed days and their delayed labels (its demo data)."""

    # Labels of a day are all known (or never will be) this many days after it.
    max_label_delay_days: float

    def generate_day(self, day: dt.date, rows: int, seed: int) -> pd.DataFrame:
        """The day's landing rows (the domain's landing columns): the same frame for the same day, size and seed."""
        ...

    def label_schedule(self, day: dt.date, rows: int, seed: int) -> pd.DataFrame:
        """Every row of `generate_day(day, rows, seed)` with its truth and when it becomes known: `id_column`,
        `label_column` (0/1) and `labelled_at` (UTC; NaT: never labelled)."""
        ...


@dataclass(frozen=True)
class Domain:
    """One kind of data: its landing columns and rules, its id, its features, its business columns and its label."""

    name: str
    id_column: str
    landing_columns: Mapping[str, pa.DataType]
    row_schema: pandera.DataFrameSchema
    features: Callable[[pd.DataFrame], pd.DataFrame]
    feature_descriptions: Mapping[str, str]
    event_time_column: str | None = None
    group_column: str | None = None
    business_columns: tuple[str, ...] = ()
    label_column: str = "label"
    # Beyond the contract's arguments, all optional:
    # column -> the values the features know; others are counted per day and warned about above `vocabulary_warn_share`.
    vocabularies: Mapping[str, frozenset[str]] = field(default_factory=dict)
    vocabulary_warn_share: float = 0.01
    # Features constant within a day by construction (a weekday flag): drift against a multi-day reference skips them.
    calendar_features: tuple[str, ...] = ()
    # The built-in deterministic source of demo days and labels; None: the domain needs BATCHINFER_LANDING_URI.
    synthetic: SyntheticSource | None = None
    # Text business column -> its length in the prediction database (others hold 128 characters).
    text_lengths: Mapping[str, int] = field(default_factory=dict)
    # How a person calls one row in logs ("transactions", "customers").
    rows_name: str = "rows"
    # Registered model name of the domain's demo model, trained and registered when the default model is absent.
    demo_model_name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "landing_columns", dict(self.landing_columns))
        object.__setattr__(self, "feature_descriptions", dict(self.feature_descriptions))
        object.__setattr__(self, "business_columns", tuple(self.business_columns))
        object.__setattr__(self, "calendar_features", tuple(self.calendar_features))
        object.__setattr__(self, "vocabularies", {c: frozenset(v) for c, v in self.vocabularies.items()})
        object.__setattr__(self, "text_lengths", dict(self.text_lengths))
        problems = self._problems()
        if problems:
            raise ValueError(f"domain {self.name!r} is not valid: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if not _NAME.match(self.name):
            problems.append(f"name must be lower-case letters, digits and _, got {self.name!r}")
        columns = self.landing_columns
        for column, type_ in columns.items():
            if not isinstance(type_, pa.DataType):
                problems.append(f"landing_columns[{column!r}] must be a pyarrow.DataType, got {type_!r}")
        if self.id_column not in columns:
            problems.append(f"id_column {self.id_column!r} is not a landing column")
        elif not pa.types.is_string(columns[self.id_column]) and not pa.types.is_large_string(columns[self.id_column]):
            problems.append(f"id_column {self.id_column!r} must be a string column, got {columns[self.id_column]}")
        if self.event_time_column is not None:
            if self.event_time_column not in columns:
                problems.append(f"event_time_column {self.event_time_column!r} is not a landing column")
            elif not pa.types.is_timestamp(columns[self.event_time_column]):
                problems.append(f"event_time_column {self.event_time_column!r} must be a timestamp column")
        if self.group_column is not None and self.group_column not in columns:
            problems.append(f"group_column {self.group_column!r} is not a landing column")
        for column in self.business_columns:
            if column not in columns:
                problems.append(f"business column {column!r} is not a landing column")
        if self.id_column in self.business_columns:
            problems.append(f"business_columns repeat the id column {self.id_column!r}")
        clashes = sorted((_RESERVED | {self.id_column}) & set(self.feature_descriptions))
        if clashes:
            problems.append(f"feature names clash with the pipeline's columns: {clashes}")
        clashes = sorted(_RESERVED & {self.id_column, *self.business_columns})
        if clashes:
            problems.append(f"id or business columns use names the pipeline's tables reserve: {clashes}")
        if not self.feature_descriptions:
            problems.append("feature_descriptions is empty: a domain needs at least one feature")
        for feature in self.feature_descriptions:
            if not feature.isidentifier() or keyword.iskeyword(feature):
                problems.append(f"feature name {feature!r} is not an identifier")
        if self.label_column in (self.id_column, "labelled_at"):
            problems.append(f"label_column {self.label_column!r} clashes with the labels zone's other columns")
        for column in self.vocabularies:
            if column not in columns:
                problems.append(f"vocabulary column {column!r} is not a landing column")
        for column, length in self.text_lengths.items():
            if column not in self.business_columns or not isinstance(length, int) or length < 1:
                problems.append(f"text_lengths[{column!r}] must be a positive length of a business column, got {length!r}")
        unknown = sorted(set(self.calendar_features) - set(self.feature_descriptions))
        if unknown:
            problems.append(f"calendar_features {unknown} are not features")
        if not callable(self.features):
            problems.append("features must be a callable: one day's valid rows -> id column plus feature columns")
        return problems

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """The feature columns, in declaration order."""
        return tuple(self.feature_descriptions)

    @property
    def snapshot_columns(self) -> tuple[str, ...]:
        """The input snapshot's columns: the id, then every feature."""
        return (self.id_column, *self.feature_columns)

    def feature_frame(self, valid: pd.DataFrame, day: str) -> pd.DataFrame:
        """The features of one day's valid rows (`id_column` then the feature columns, in input order), or an error
        naming what the domain's feature function got wrong."""
        features = self.features(valid)
        where = f"{day}: the {self.name} domain's features"
        if not isinstance(features, pd.DataFrame):
            raise FeatureFunctionError(f"{where} returned a {type(features).__name__}, not a pandas DataFrame")
        missing = [c for c in self.snapshot_columns if c not in features.columns]
        if missing:
            raise FeatureFunctionError(f"{where} lack column(s) {missing} (declared in feature_descriptions)")
        if len(features) != len(valid):
            raise FeatureFunctionError(f"{where} have {len(features):,} rows for {len(valid):,} valid rows (one row per row)")
        return features.loc[:, list(self.snapshot_columns)].reset_index(drop=True)

    @property
    def demo_model_uri(self) -> str | None:
        """The default model URI of the domain's demo model."""
        return f"models:/{self.demo_model_name}@champion" if self.demo_model_name else None


class FeatureFunctionError(ValueError):
    """A domain's feature function returned something the pipeline cannot snapshot (a bug in the domain's code)."""


def load_domain(reference: str | None) -> Domain:
    """The domain `module.path:attribute` names (the built-in one for None), or an error naming what is wrong."""
    reference = reference or BUILT_IN_DOMAIN
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{DOMAIN_VARIABLE} must be module.path:attribute, got {reference!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{DOMAIN_VARIABLE}={reference!r}: module {module_name!r} cannot be imported ({error})") from error
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ValueError(f"{DOMAIN_VARIABLE}={reference!r}: {module_name} has no attribute {attribute!r}")
        value = getattr(value, part)
    if not isinstance(value, Domain):
        raise ValueError(f"{DOMAIN_VARIABLE}={reference!r} is a {type(value).__name__}, not a batchinfer_assets.Domain")
    return value
