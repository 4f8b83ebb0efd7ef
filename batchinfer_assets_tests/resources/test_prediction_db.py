import pandas as pd
import sqlalchemy as sa

from batchinfer_assets.resources.prediction_db import PredictionDatabaseResource


def _predictions(ids, version="1"):
    return pd.DataFrame(
        {
            "transaction_id": ids,
            "score": [0.25] * len(ids),
            "label": [0] * len(ids),
            "model_name": ["fraud-detector"] * len(ids),
            "model_version": [version] * len(ids),
        }
    )


def _rows(url):
    with sa.create_engine(url).connect() as conn:
        return conn.execute(sa.text("select dt, transaction_id, model_version from predictions order by 1, 2")).all()


def test_republishing_a_day_replaces_its_rows_only(tmp_path):
    url = f"sqlite:///{tmp_path}/sub/predictions.db"
    db = PredictionDatabaseResource(url=url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]))
    db.replace_partition("2025-01-02", _predictions(["c"]))
    db.replace_partition("2025-01-01", _predictions(["a", "d"], version="2"))

    assert _rows(url) == [("2025-01-01", "a", "2"), ("2025-01-01", "d", "2"), ("2025-01-02", "c", "1")]
    assert db.count_partition("2025-01-01") == 2


def test_failed_publish_keeps_previous_rows(tmp_path):
    url = f"sqlite:///{tmp_path}/predictions.db"
    db = PredictionDatabaseResource(url=url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]))
    duplicate_ids = _predictions(["x", "x"])
    try:
        db.replace_partition("2025-01-01", duplicate_ids)
    except sa.exc.IntegrityError:
        pass
    else:
        raise AssertionError("duplicate primary keys were accepted")
    assert _rows(url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_safe_url_masks_password():
    db = PredictionDatabaseResource(url="postgresql+psycopg://user:secret@db:5432/preds")
    assert "secret" not in db.safe_url()
