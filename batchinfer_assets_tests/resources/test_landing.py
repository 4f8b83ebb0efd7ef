import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchinfer_assets.lib.landing import LANDING_DTYPES, LandingDataError
from batchinfer_assets.resources.landing import ParquetLandingZoneResource, SyntheticLandingZoneResource

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

    frame = ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY)

    assert list(frame.columns) == list(LANDING_DTYPES)
    assert len(frame) == 6
    assert frame["transaction_id"].tolist()[-2:] == ["x0", "x1"]
    assert str(frame["event_time"].dtype) == "datetime64[us, UTC]"


def test_synthetic_landing_conforms_to_contract_types():
    frame = SyntheticLandingZoneResource(rows_per_day=300).load_day(DAY)
    assert len(frame) == 300
    assert {c: str(frame[c].dtype) for c in frame.columns} == {
        c: ("string" if t == "string" else t) for c, t in LANDING_DTYPES.items()
    }


def test_missing_day_names_the_day_and_the_place(tmp_path):
    with pytest.raises(LandingDataError, match=rf"no landing data for 2025-03-04: folder {tmp_path}/dt=2025-03-04"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY)


def test_missing_column_is_named(tmp_path):
    _land(tmp_path, _landing_frame().drop(columns=["channel"]))
    with pytest.raises(LandingDataError, match="required column.*missing: channel"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY)


def test_uncastable_column_is_named(tmp_path):
    _land(tmp_path, _landing_frame().assign(amount=["a", "b", "c", "d"]))
    with pytest.raises(LandingDataError, match="column 'amount'.*cannot be cast to float64"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY)


def test_corrupt_file_is_named(tmp_path):
    folder = _land(tmp_path, _landing_frame())
    (folder / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(LandingDataError, match=r"unreadable landing file .*broken\.parquet"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY)


def test_empty_day_fails_unless_allowed(tmp_path):
    _land(tmp_path, _landing_frame().head(0))
    with pytest.raises(LandingDataError, match="has no rows"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY)
    assert ParquetLandingZoneResource(uri=str(tmp_path), allow_empty_days=True).load_day(DAY).empty


@pytest.mark.parametrize(
    ("event_time", "expected"),
    [
        pytest.param(pd.Timestamp("2025-03-04 09:30", tz="Europe/Paris"), pd.Timestamp("2025-03-04 08:30", tz="UTC"), id="zoned: converted"),
        pytest.param(pd.Timestamp("2025-03-04 09:30"), pd.Timestamp("2025-03-04 09:30", tz="UTC"), id="naive: read as UTC"),
    ],
)
def test_event_times_in_any_zone_are_conformed_to_utc(tmp_path, event_time, expected):
    _land(tmp_path, _landing_frame(1).assign(event_time=[event_time]))

    frame = ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY)

    assert frame.loc[0, "event_time"] == expected and str(frame["event_time"].dtype) == "datetime64[us, UTC]"


def test_timestamps_as_numbers_are_named(tmp_path):
    _land(tmp_path, _landing_frame().assign(event_time=[1, 2, 3, 4]))
    with pytest.raises(LandingDataError, match="column 'event_time'.*cannot be cast to datetime64"):
        ParquetLandingZoneResource(uri=str(tmp_path)).load_day(DAY)
