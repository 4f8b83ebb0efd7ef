"""How two scorings of a day differ, as a reproduction reports it."""

import pyarrow as pa
import pytest

from batchinfer_assets.lib.predictions_diff import describe_difference


def _day(ids, scores, labels, version="1"):
    return pa.table(
        {
            "transaction_id": pa.array(ids, pa.large_string()),
            "score": pa.array(scores, pa.float32()),
            "label": pa.array(labels, pa.int8()),
            "model_version": pa.array([version] * len(ids), pa.large_string()),
        }
    )


ORIGINAL = _day(["a", "b", "c"], [0.25, 0.5, 0.75], [0, 1, 1])


@pytest.mark.parametrize(
    "reproduced, expected",
    [
        (
            _day(["a", "b", "c"], [0.25, 0.375, 0.75], [0, 0, 1]),
            "first differing row 1 (transaction_id 'b'): score 0.375 (original 0.5), label 0 (original 1); "
            "max |score diff| 0.125 over 3 rows with the same transaction_id; 1 label(s) differ",
        ),
        (
            _day(["a", "b"], [0.25, 0.5], [0, 1]),
            "2 rows where the original has 3; max |score diff| 0 over 2 rows with the same transaction_id; 0 label(s) differ",
        ),
        (
            _day(["a", "b", "c"], [0.25, 0.5, 0.75], [0, 1, 1], version="2"),
            "first differing row 0 (transaction_id 'a'): model_version '2' (original '1'); "
            "max |score diff| 0 over 3 rows with the same transaction_id; 0 label(s) differ",
        ),
        (
            ORIGINAL,
            "max |score diff| 0 over 3 rows with the same transaction_id; 0 label(s) differ; every row and value is equal; "
            "only the files' bytes differ (Parquet layout or metadata)",
        ),
    ],
)
def test_the_difference_names_row_counts_the_first_differing_row_and_the_largest_score_gap(reproduced, expected):
    assert describe_difference(ORIGINAL, reproduced, "transaction_id") == expected
