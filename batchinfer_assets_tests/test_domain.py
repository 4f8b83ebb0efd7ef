"""A domain: its declaration is checked when built, selected by BATCHINFER_DOMAIN, and its training set is what is served."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq
import pytest

import batchinfer_assets
from batchinfer_assets import Domain
from batchinfer_assets.domain import FeatureFunctionError, load_domain
from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.domains.customer_churn import domain as CHURN
from batchinfer_assets.partitions import start_date
from batchinfer_assets.resources.labels_zone import SyntheticLabelsResource
from batchinfer_assets.resources.landing_zone import SyntheticLandingZoneResource
from batchinfer_assets.settings import Settings
from batchinfer_assets.training_set import read_training_set, write_training_set

COLUMNS = {"reading_id": pyarrow.string(), "van_id": pyarrow.string(), "km": pyarrow.float64(), "at": pyarrow.timestamp("us", tz="UTC")}


def km_features(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"reading_id": rows["reading_id"], "log_km": np.log1p(rows["km"]).astype(np.float32)})


def declared(**changes) -> dict:
    arguments = {
        "name": "fleet",
        "id_column": "reading_id",
        "landing_columns": COLUMNS,
        "row_schema": pa.DataFrameSchema({"km": pa.Column(float, checks=pa.Check.ge(0))}),
        "features": km_features,
        "feature_descriptions": {"log_km": "log1p of the kilometres"},
        "business_columns": ("van_id",),
        "event_time_column": "at",
    }
    return arguments | changes


def test_a_domain_built_from_the_contracts_arguments_derives_its_tables_columns():
    domain = Domain(**declared(label_column="broke_down"))
    assert domain.feature_columns == ("log_km",)
    assert domain.snapshot_columns == ("reading_id", "log_km")
    assert domain.demo_model_uri is None and domain.synthetic is None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"name": "Fleet Vans"}, "name must be lower-case letters", id="name"),
        pytest.param({"id_column": "vin"}, "id_column 'vin' is not a landing column", id="id missing"),
        pytest.param({"id_column": "km"}, "id_column 'km' must be a string column", id="id not text"),
        pytest.param({"event_time_column": "van_id"}, "event_time_column 'van_id' must be a timestamp column", id="event time"),
        pytest.param({"group_column": "depot"}, "group_column 'depot' is not a landing column", id="group"),
        pytest.param({"business_columns": ("driver",)}, "business column 'driver' is not a landing column", id="business"),
        pytest.param({"feature_descriptions": {"score": "x"}}, "feature names clash with the pipeline's columns: ['score']", id="reserved"),
        pytest.param({"feature_descriptions": {}}, "a domain needs at least one feature", id="no features"),
        pytest.param({"feature_descriptions": {"log km": "x"}}, "feature name 'log km' is not an identifier", id="identifier"),
        pytest.param({"label_column": "reading_id"}, "label_column 'reading_id' clashes", id="label"),
        pytest.param({"landing_columns": {**COLUMNS, "km": "float64"}}, "landing_columns['km'] must be a pyarrow.DataType", id="type"),
        pytest.param({"vocabularies": {"depot": {"a"}}}, "vocabulary column 'depot' is not a landing column", id="vocabulary"),
        pytest.param({"text_lengths": {"van_id": 0}}, "text_lengths['van_id'] must be a positive length", id="length"),
        pytest.param({"calendar_features": ("is_weekend",)}, "calendar_features ['is_weekend'] are not features", id="calendar"),
    ],
)
def test_a_declaration_that_cannot_work_is_refused_when_built_naming_the_problem(changes, problem):
    with pytest.raises(ValueError, match="domain '.*' is not valid: .*" + _escaped(problem)):
        Domain(**declared(**changes))


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("batchinfer_assets.domains.card_transactions", "must be module.path:attribute"),
        ("batchinfer_assets.no_such_module:domain", "module 'batchinfer_assets.no_such_module' cannot be imported"),
        ("batchinfer_assets.domains.card_transactions:nothing", "has no attribute 'nothing'"),
        ("batchinfer_assets.domains.card_transactions:ROW_SCHEMA", "is a DataFrameSchema, not a batchinfer_assets.Domain"),
    ],
)
def test_batchinfer_domain_names_what_is_wrong_with_its_reference(tmp_path, reference, problem):
    with pytest.raises(ValueError, match=_escaped(problem)):
        Settings.from_env(environ={"BATCHINFER_HOME": str(tmp_path), "BATCHINFER_DOMAIN": reference})


def test_the_built_in_domains_are_selected_by_reference_and_card_transactions_is_the_default(tmp_path):
    assert Settings.from_env(environ={"BATCHINFER_HOME": str(tmp_path)}).model_uri == "models:/fraud-detector@champion"
    churn = Settings.from_env(
        environ={"BATCHINFER_HOME": str(tmp_path), "BATCHINFER_DOMAIN": "batchinfer_assets.domains.customer_churn:domain"}
    )
    assert load_domain(churn.domain).name == "customer_churn" and churn.model_uri == "models:/churn-predictor@champion"
    assert load_domain(None) is CARD


@pytest.mark.parametrize("domain", [CARD, CHURN], ids=lambda domain: domain.name)
def test_no_module_outside_domains_names_a_built_in_domains_columns_or_features(domain):
    names = sorted({*domain.landing_columns, domain.label_column, *domain.feature_columns}, key=len, reverse=True)
    word = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    package = Path(batchinfer_assets.__file__).parent
    found = [
        f"{path.relative_to(package)}:{number}: {match.group(0)}"
        for path in sorted(package.rglob("*.py"))
        if path.relative_to(package).parts[0] != "domains"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for match in word.finditer(line)
    ]
    assert found == [], f"only batchinfer_assets/domains/ may name the {domain.name} data's columns"


def test_a_domain_without_synthetic_source_or_demo_model_asks_for_the_variables_it_needs(tmp_path, monkeypatch):
    import sys
    import types

    module = types.ModuleType("fleet_for_settings")
    module.domain = Domain(**declared())
    monkeypatch.setitem(sys.modules, module.__name__, module)
    environ = {"BATCHINFER_HOME": str(tmp_path), "BATCHINFER_DOMAIN": "fleet_for_settings:domain"}
    with pytest.raises(ValueError, match="no synthetic source; set BATCHINFER_LANDING_URI"):
        Settings.from_env(environ=environ)
    with pytest.raises(ValueError, match="no demo model: set BATCHINFER_MODEL_URI"):
        Settings.from_env(environ={**environ, "BATCHINFER_LANDING_URI": str(tmp_path)})
    settings = Settings.from_env(environ={**environ, "BATCHINFER_LANDING_URI": str(tmp_path), "BATCHINFER_MODEL_URI": "models:/vans@champion"})
    assert settings.model_uri == "models:/vans@champion"


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        (lambda rows: rows["reading_id"], "returned a Series, not a pandas DataFrame"),
        (lambda rows: pd.DataFrame({"reading_id": rows["reading_id"]}), "lack column(s) ['log_km']"),
        (lambda rows: km_features(rows).head(1), "have 1 rows for 2 valid rows"),
    ],
)
def test_a_feature_function_that_breaks_the_contract_is_named(returned, problem):
    domain = Domain(**declared(features=returned))
    rows = pd.DataFrame({"reading_id": ["a", "b"], "van_id": ["v", "w"], "km": [1.0, 2.0]})
    with pytest.raises(FeatureFunctionError, match=f"2025-01-03: the fleet domain's features {_escaped(problem)}"):
        domain.feature_frame(rows, "2025-01-03")


def test_the_first_partition_is_batchinfer_start_date(tmp_path):
    assert start_date(None) == "2025-01-01" and start_date("2024-06-01") == "2024-06-01"
    with pytest.raises(ValueError, match="BATCHINFER_START_DATE must be a day as YYYY-MM-DD, got '2024-13-01'"):
        Settings.from_env(environ={"BATCHINFER_HOME": str(tmp_path), "BATCHINFER_START_DATE": "2024-13-01"})


def test_the_training_set_is_the_served_rows_features_and_the_labels_known_by_then(tmp_path):
    day = dt.date(2024, 11, 4)
    landing = SyntheticLandingZoneResource(rows_per_day=500)
    # Two days after the day: the card source has released some labels, not all (median delay 2.5 days).
    labels = SyntheticLabelsResource(rows_per_day=500, now=(day + dt.timedelta(days=2)).isoformat())
    out = tmp_path / "training.parquet"

    summary = write_training_set(CARD, landing, labels, day, day + dt.timedelta(days=1), out)

    table = pq.read_table(out)
    assert table.column_names == ["transaction_id", "dt", *CARD.feature_columns, "is_fraud"]
    assert summary.days == ["2024-11-04", "2024-11-05"] and summary.rows == table.num_rows == 1000
    first = table.filter(pyarrow.compute.equal(table.column("dt"), "2024-11-04")).to_pandas()
    raw = landing.load_day(day, CARD)
    features = CARD.feature_frame(raw, day.isoformat())
    np.testing.assert_array_equal(first[list(CARD.feature_columns)].to_numpy(), features[list(CARD.feature_columns)].to_numpy())
    # Known labels are the released ones; the rest are null (not 0): a later training set will know them.
    released = labels.labels_for(day, CARD).labels.set_index("transaction_id")["is_fraud"]
    known = first.set_index("transaction_id")["is_fraud"].dropna()
    assert 0 < len(known) < len(first) and (known == released.loc[known.index].astype(float)).all()
    x, y = read_training_set(out, CARD)
    assert x.shape == (summary.labelled, len(CARD.feature_columns)) and x.dtype == np.float32 and len(y) == summary.labelled


def test_a_training_set_leaves_quarantined_rows_out_and_lists_days_without_data(tmp_path):
    domain = CARD
    landing_root = tmp_path / "landing"
    day = dt.date(2024, 11, 4)
    frame = CARD.synthetic.generate_day(day, 300, 1)
    frame.loc[:4, "amount"] = -1.0
    (landing_root / f"dt={day}").mkdir(parents=True)
    frame.to_parquet(landing_root / f"dt={day}" / "part-0.parquet", index=False)
    from batchinfer_assets.resources.labels_zone import NoLabelsResource
    from batchinfer_assets.resources.landing_zone import ParquetLandingZoneResource

    out = tmp_path / "training.parquet"
    summary = write_training_set(domain, ParquetLandingZoneResource(uri=str(landing_root)), NoLabelsResource(), day, day + dt.timedelta(days=2), out)

    assert (summary.rows, summary.quarantined, summary.labelled) == (295, 5, 0)
    assert summary.missing_days == ["2024-11-05", "2024-11-06"]
    assert pq.read_table(out).column("is_fraud").null_count == 295
    with pytest.raises(ValueError, match="no landing data for any day from 2024-12-01 to 2024-12-02: nothing written"):
        write_training_set(domain, ParquetLandingZoneResource(uri=str(landing_root)), NoLabelsResource(), dt.date(2024, 12, 1), dt.date(2024, 12, 2), tmp_path / "none.parquet")
    assert not (tmp_path / "none.parquet").exists()
