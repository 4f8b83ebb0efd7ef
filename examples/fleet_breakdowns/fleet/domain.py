"""The fleet's data: one row per van per day (what the telematics export lands), labelled when a van broke down."""

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

from batchinfer_assets import Domain


def features(rows: pd.DataFrame) -> pd.DataFrame:
    """One row of features per landed row, in the same order."""
    return pd.DataFrame(
        {
            "reading_id": rows["reading_id"],
            "log_km": np.log1p(rows["km_driven"].astype("float64")).astype(np.float32),
            "engine_temp": ((rows["engine_temp_c"] - 90.0) / 10.0).astype(np.float32),
            "old_van": (rows["age_years"] >= 8).astype(np.float32),
        }
    )


domain = Domain(
    name="fleet",
    id_column="reading_id",
    landing_columns={
        "reading_id": pyarrow.string(),
        "van_id": pyarrow.string(),
        "km_driven": pyarrow.float64(),
        "engine_temp_c": pyarrow.float64(),
        "age_years": pyarrow.int64(),
    },
    row_schema=pa.DataFrameSchema(
        {
            "van_id": pa.Column(nullable=False),
            "km_driven": pa.Column(float, checks=pa.Check.ge(0)),
            "engine_temp_c": pa.Column(float, checks=pa.Check.in_range(-40, 200)),
        }
    ),
    features=features,
    feature_descriptions={
        "log_km": "log1p of the kilometres driven that day",
        "engine_temp": "the day's peak engine temperature, centred on 90 C, in tens of degrees",
        "old_van": "1 for vans 8 years old or more",
    },
    business_columns=("van_id", "km_driven"),
    label_column="broke_down",
    rows_name="vans",
)
