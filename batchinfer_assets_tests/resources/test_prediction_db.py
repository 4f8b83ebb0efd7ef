import socket
import threading

import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa

from batchinfer_assets.resources.prediction_db import PredictionDatabaseConnectionError, PredictionDatabaseResource


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
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("select dt, transaction_id, model_version from predictions order by 1, 2")).all()
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql+psycopg", "postgresql+psycopg2"])
def db_url(request, tmp_path):
    """A fresh prediction database: SQLite in tmp_path, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sub/predictions.db"
    server = request.getfixturevalue("postgres_server")
    return server.url(server.create_database("preds"), driver=request.param.split("+")[1])


def test_republishing_a_day_replaces_its_rows_only(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]))
    db.replace_partition("2025-01-02", _predictions(["c"]))
    db.replace_partition("2025-01-01", _predictions(["a", "d"], version="2"))

    assert _rows(db_url) == [("2025-01-01", "a", "2"), ("2025-01-01", "d", "2"), ("2025-01-02", "c", "1")]
    assert db.count_partition("2025-01-01") == 2


def test_duplicate_ids_are_refused_and_previous_rows_kept(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]))
    with pytest.raises(ValueError, match=r"predictions for 2025-01-01 repeat 1 transaction_id\(s\), e.g. 'x'"):
        db.replace_partition("2025-01-01", _predictions(["x", "y", "x"]))
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_a_failing_insert_rolls_back_the_delete(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]))
    too_long_version = _predictions(["c"], version="v" * 100_000)
    # SQLite does not enforce VARCHAR lengths; force a NOT NULL violation there instead.
    if db_url.startswith("sqlite"):
        too_long_version = _predictions(["c"]).assign(score=[None])
    with pytest.raises((sa.exc.DBAPIError, psycopg.Error)):
        db.replace_partition("2025-01-01", too_long_version)
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_safe_url_masks_password():
    db = PredictionDatabaseResource(url="postgresql+psycopg://user:secret@db:5432/preds")
    assert "secret" not in db.safe_url()


def test_postgres_bulk_load_keeps_every_value(postgres_server):
    url = postgres_server.url(postgres_server.create_database("preds"))
    frame = pd.DataFrame(
        {
            "transaction_id": [f"tx-{i}\t'\"\\,{i}" for i in range(5000)],
            "score": [i / 4999 for i in range(5000)],
            "label": [i % 2 for i in range(5000)],
            "model_name": [None if i % 7 == 0 else "fraud-detector" for i in range(5000)],
            "model_version": ["12"] * 5000,
        }
    )
    assert PredictionDatabaseResource(url=url).replace_partition("2025-02-03", frame) == 5000

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stored = pd.read_sql("select transaction_id, score, label, model_name, model_version from predictions", conn)
    engine.dispose()
    stored = stored.sort_values("score", ignore_index=True)
    assert stored["transaction_id"].tolist() == frame["transaction_id"].tolist()
    assert stored["score"].tolist() == frame["score"].tolist()
    assert stored["label"].tolist() == frame["label"].tolist()
    assert stored["model_name"].isna().sum() == frame["model_name"].isna().sum()


def test_postgres_concurrent_publishes_of_one_day_never_collide(postgres_server):
    url = postgres_server.url(postgres_server.create_database("preds"))
    ids = [f"t{i}" for i in range(2000)]
    errors = []

    def publish(version: str) -> None:
        db = PredictionDatabaseResource(url=url)
        try:
            for _ in range(3):
                db.replace_partition("2025-01-01", _predictions(ids, version=version))
        except sa.exc.DBAPIError as exc:
            errors.append(exc)
        finally:
            db.engine.dispose()

    threads = [threading.Thread(target=publish, args=(v,)) for v in ("1", "2", "3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    rows = _rows(url)
    assert len(rows) == len(ids) and len({version for _, _, version in rows}) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgres_names_host_port_and_database_not_password():
    port = _closed_port()
    db = PredictionDatabaseResource(url=f"postgresql+psycopg://alice:hunter2-pw@127.0.0.1:{port}/predictions_prod")
    with pytest.raises(PredictionDatabaseConnectionError) as failure:
        db.replace_partition("2025-01-01", _predictions(["a"]))
    message = str(failure.value)
    assert f"'predictions_prod' at 127.0.0.1:{port}" in message and "'alice'" in message
    assert "hunter2" not in message


def test_wrong_password_on_a_real_server_is_a_clear_error(postgres_server):
    name = postgres_server.create_database("preds")
    url = postgres_server.url(name).replace(postgres_server.password, "not-the-password")
    with pytest.raises(PredictionDatabaseConnectionError, match="password authentication failed") as failure:
        PredictionDatabaseResource(url=url).count_partition("2025-01-01")
    assert f"{name!r} at 127.0.0.1:{postgres_server.port}" in str(failure.value)
    assert "not-the-password" not in str(failure.value)
