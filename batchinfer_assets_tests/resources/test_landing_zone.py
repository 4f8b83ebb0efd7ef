import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchinfer_assets.lib.landing import LandingDataError, conform_landing_frame
from batchinfer_assets.resources.landing_zone import ParquetLandingZoneResource, SyntheticLandingZoneResource
from batchinfer_assets.domains.card_transactions import domain as CARD

DAY = dt.date(2025, 3, 4)


def _landing_frame(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "event_time": pd.date_range("2025-03-04 08:00", periods=n, freq="h", tz="UTC"),
            "customer_id": ["c1"] * n,
            "merchant_category": ["grocery"] * n,
            "amount": [12.5] * n,
            "currency": ["USD"] * n,
            "channel": ["pos"] * n,
            "country": ["US"] * n,
            "extra_column": [1] * n,
        }
    )


def _land(root, frame: pd.DataFrame, name: str = "part-0.parquet", day: dt.date = DAY):
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / name)
    return folder


def test_parquet_landing_reads_all_files_and_drops_extra_columns(tmp_path):
    _land(tmp_path, _landing_frame(4), "a.parquet")
    _land(tmp_path, _landing_frame(2).assign(transaction_id=["x0", "x1"]), "b.parquet")

    frame = ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)

    assert list(frame.columns) == list(CARD.landing_columns)
    assert len(frame) == 6
    assert frame["transaction_id"].tolist()[-2:] == ["x0", "x1"]
    assert str(frame["event_time"].dtype) == "datetime64[us, UTC]"


def test_synthetic_landing_conforms_to_contract_types():
    frame = SyntheticLandingZoneResource(rows_per_day=300).load_day(DAY, CARD)
    assert len(frame) == 300
    assert {c: str(frame[c].dtype) for c in frame.columns} == {
        "transaction_id": "string",
        "event_time": "datetime64[us, UTC]",
        "customer_id": "string",
        "merchant_category": "string",
        "amount": "float64",
        "currency": "string",
        "channel": "string",
        "country": "string",
    }


def test_missing_day_names_the_day_and_the_place(tmp_path):
    with pytest.raises(LandingDataError, match=rf"no landing data for 2025-03-04: folder {tmp_path}/dt=2025-03-04"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)


def test_missing_column_is_named(tmp_path):
    _land(tmp_path, _landing_frame().drop(columns=["channel"]))
    with pytest.raises(LandingDataError, match="required column.*missing: channel"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)


def test_uncastable_column_is_named(tmp_path):
    _land(tmp_path, _landing_frame().assign(amount=["a", "b", "c", "d"]))
    with pytest.raises(LandingDataError, match="column 'amount'.*cannot be cast to float64"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)


def test_corrupt_file_is_named(tmp_path):
    folder = _land(tmp_path, _landing_frame())
    (folder / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(LandingDataError, match=r"landing file .*broken\.parquet is not a readable Parquet file"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)


def test_empty_day_fails_unless_allowed(tmp_path):
    _land(tmp_path, _landing_frame().head(0))
    with pytest.raises(LandingDataError, match="has no rows"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)
    assert ParquetLandingZoneResource(uri=str(tmp_path), allow_empty_days=True).load_day(DAY, CARD).empty


@pytest.mark.parametrize(
    ("event_time", "expected"),
    [
        pytest.param(pd.Timestamp("2025-03-04 09:30", tz="Europe/Paris"), pd.Timestamp("2025-03-04 08:30", tz="UTC"), id="zoned: converted"),
        pytest.param(pd.Timestamp("2025-03-04 09:30"), pd.Timestamp("2025-03-04 09:30", tz="UTC"), id="naive: read as UTC"),
    ],
)
def test_event_times_in_any_zone_are_conformed_to_utc(tmp_path, event_time, expected):
    _land(tmp_path, _landing_frame(1).assign(event_time=[event_time]))

    frame = ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)

    assert frame.loc[0, "event_time"] == expected and str(frame["event_time"].dtype) == "datetime64[us, UTC]"


def test_timestamps_as_numbers_are_named(tmp_path):
    _land(tmp_path, _landing_frame().assign(event_time=[1, 2, 3, 4]))
    with pytest.raises(LandingDataError, match="column 'event_time'.*cannot be cast to datetime64"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)


def test_every_writers_file_names_are_read_and_their_bookkeeping_is_not(tmp_path):
    """Spark, Hive, Athena UNLOAD and hand uploads name data files differently; all of them are data."""
    names = {
        "part-00000-3f1c9a2e-1b7d-4c55-9d1e-8f4b2a6c0e11.c000.snappy.parquet": "s",  # Spark
        "000000_0": "h",  # Hive, no extension
        "20250304_101112_00042_abcde_6a7b8c9d-0000-0000-0000-000000000000": "a",  # Athena UNLOAD
        "Upload.PARQUET": "u",  # by hand
        "hour=07/part-00001.parquet": "n",  # Spark partitionBy below the day
    }
    for name, prefix in names.items():
        folder = tmp_path / f"dt={DAY.isoformat()}" / name
        folder.parent.mkdir(parents=True, exist_ok=True)
        frame = _landing_frame(2).assign(transaction_id=[f"{prefix}0", f"{prefix}1"])
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder)
    day = tmp_path / f"dt={DAY.isoformat()}"
    for bookkeeping in ("_SUCCESS", "_committed_123", ".part-00000.crc", "query-manifest.csv"):
        (day / bookkeeping).write_text("not data")
    (day / ".hive-staging_hive_2025").mkdir()
    (day / ".hive-staging_hive_2025" / "000000_0").write_text("in flight")

    frame = ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)
    assert sorted(frame["transaction_id"]) == sorted(f"{p}{i}" for p in names.values() for i in (0, 1))


def test_a_file_that_is_neither_data_nor_bookkeeping_fails_the_day_naming_it(tmp_path):
    folder = _land(tmp_path, _landing_frame(3))
    (folder / "notes.csv").write_text("transaction_id,amount\nt9,1.0\n")
    with pytest.raises(LandingDataError, match=r"landing file .*notes\.csv is not a readable Parquet file.*remove or move it"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)


def test_a_decimal_amount_is_read_as_a_number_and_text_amounts_are_named(tmp_path):
    import decimal

    frame = _landing_frame(3)
    table = pa.Table.from_pandas(frame.drop(columns=["amount"]), preserve_index=False).append_column(
        "amount", pa.array([decimal.Decimal("12.50"), decimal.Decimal("0.01"), decimal.Decimal("1999.99")], pa.decimal128(12, 2))
    )
    folder = tmp_path / f"dt={DAY.isoformat()}"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")
    assert ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)["amount"].tolist() == [12.5, 0.01, 1999.99]

    pq.write_table(pa.Table.from_pandas(frame.assign(amount=["1.5", "n/a", "2"]), preserve_index=False), folder / "part-0.parquet")
    with pytest.raises(LandingDataError, match=r"column 'amount'.*the values are text \(e.g. '1.5'\); write a float64 or DECIMAL column"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)


def _land_arrow(root, column: str, values: pa.Array, n: int = 3) -> None:
    frame = _landing_frame(n).drop(columns=[column])
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column(column, values)
    folder = root / f"dt={DAY.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-0.parquet")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(pa.array([DAY] * 3, pa.date32()), r"the values are dates without a time of day", id="date32"),
        pytest.param(pa.array([DAY] * 3, pa.date64()), r"the values are dates without a time of day", id="date64"),
        pytest.param(pa.array(["2025-03-04"] * 3), r"the values are text \(e.g. '2025-03-04'\)", id="date as text"),
        pytest.param(pa.array(["2025-03-04T10:00:00Z"] * 3), r"the values are text", id="timestamp as text"),
    ],
)
def test_an_event_time_without_its_time_of_day_is_refused_naming_file_column_and_type(tmp_path, values, message):
    """A date column read as midnight would put every row "at night"; text would be parsed by guesswork."""
    _land_arrow(tmp_path, "event_time", values)
    with pytest.raises(LandingDataError, match=rf"part-0\.parquet: column 'event_time' of type \w+ cannot be cast to datetime64.*{message}.*write a timestamp column"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        pytest.param(pa.array([b"c1", b"c2", b"c\x003"], pa.binary()), "bytes", id="binary"),
        pytest.param(pa.array([DAY] * 3, pa.date32()), "date", id="dates"),
    ],
)
def test_a_text_column_holding_other_values_is_refused_not_stringified(tmp_path, values, kind):
    _land_arrow(tmp_path, "customer_id", values)
    with pytest.raises(LandingDataError, match=rf"column 'customer_id' of type object cannot be cast to string: expected text, found object holding {kind} values"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)


def test_dictionary_encoded_text_is_read_as_text(tmp_path):
    _land_arrow(tmp_path, "merchant_category", pa.array(["grocery", "travel", "grocery"]).dictionary_encode())
    frame = ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY, CARD)
    assert frame["merchant_category"].tolist() == ["grocery", "travel", "grocery"]
    assert str(frame["merchant_category"].dtype) == "string"


INTEGER_DOMAIN_COLUMNS = {"id": pa.string(), "visits": pa.int64(), "active": pa.bool_()}


def test_a_domains_integer_and_boolean_columns_are_read_without_loss():
    frame = pd.DataFrame({"id": ["a", "b"], "visits": pd.array([3, None], dtype="Int32"), "active": [True, False]})
    conformed = conform_landing_frame(frame, "x.parquet", INTEGER_DOMAIN_COLUMNS)
    assert [str(t) for t in conformed.dtypes] == ["string", "Int64", "boolean"]
    assert conformed["visits"].tolist()[0] == 3 and conformed["visits"].isna().tolist() == [False, True]
    # Whole floats are integers; fractions would be truncated, so they are refused naming the column.
    assert conform_landing_frame(frame.assign(visits=[3.0, 4.0]), "x.parquet", INTEGER_DOMAIN_COLUMNS)["visits"].tolist() == [3, 4]
    with pytest.raises(LandingDataError, match="x.parquet: column 'visits' .* fractions"):
        conform_landing_frame(frame.assign(visits=[3.5, 4.0]), "x.parquet", INTEGER_DOMAIN_COLUMNS)
    with pytest.raises(LandingDataError, match="column 'active' .* expected booleans"):
        conform_landing_frame(frame.assign(active=["yes", "no"]), "x.parquet", INTEGER_DOMAIN_COLUMNS)
