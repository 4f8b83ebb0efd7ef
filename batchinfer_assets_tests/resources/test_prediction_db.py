import datetime as dt
import socket
import threading

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pytest
import sqlalchemy as sa

from batchinfer_assets import Domain
from batchinfer_assets.domains import card_transactions
from batchinfer_assets.resources.prediction_db import (
    PredictionDatabaseConnectionError,
    PredictionDatabaseResource,
    PredictionsRefusedError,
    predictions_table,
    published_text_lengths,
    scoring_runs_table,
)

CARD = card_transactions.domain


def _churn_domain(business_columns=("customer_id", "plan", "monthly_fee", "tenure_days", "is_trial")):
    """A second domain shaped unlike the card one: another id, text, float, integer and boolean business columns."""
    return Domain(
        name="customer_churn",
        id_column="customer_day_id",
        landing_columns={
            "customer_day_id": pa.string(),
            "customer_id": pa.string(),
            "plan": pa.large_string(),
            "monthly_fee": pa.float64(),
            "tenure_days": pa.int64(),
            "is_trial": pa.bool_(),
        },
        row_schema=pandera.DataFrameSchema({}),
        features=lambda frame: pd.DataFrame({"customer_day_id": frame["customer_day_id"], "fee": frame["monthly_fee"]}),
        feature_descriptions={"fee": "the monthly fee"},
        business_columns=business_columns,
        label_column="churned",
    )


CHURN = _churn_domain()

EVENT_TIME = pa.timestamp("us", tz="UTC")


def _predictions(ids, version="1", **columns):
    """An Arrow table as the publishing asset hands it over; `columns` replace the defaults."""
    n = len(ids)
    base = {
        "transaction_id": pa.array(ids, pa.string()),
        "score": pa.array([0.25] * n, pa.float32()),
        "label": pa.array([0] * n, pa.int8()),
        "model_name": pa.array(["fraud-detector"] * n, pa.string()),
        "model_version": pa.array([version] * n, pa.string()),
        "customer_id": pa.array([f"C{i:07d}" for i in range(n)], pa.string()),
        "event_time": pa.array([dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)] * n, EVENT_TIME),
        "amount": pa.array([12.5] * n, pa.float64()),
        "merchant_category": pa.array(["grocery"] * n, pa.string()),
    }
    return pa.table({**base, **columns})


def _churn_predictions(ids, version="1", **columns):
    """A day of the churn domain as the publishing asset would hand it over; `columns` replace the defaults."""
    n = len(ids)
    base = {
        "customer_day_id": pa.array(ids, pa.string()),
        "score": pa.array([0.75] * n, pa.float32()),
        "label": pa.array([1] * n, pa.int8()),
        "model_name": pa.array(["churn-model"] * n, pa.string()),
        "model_version": pa.array([version] * n, pa.string()),
        "customer_id": pa.array([f"K{i}" for i in range(n)], pa.string()),
        "plan": pa.array(["basic" if i % 2 else "premium" for i in range(n)], pa.string()),
        "monthly_fee": pa.array([9.99 + i for i in range(n)], pa.float64()),
        # Beyond 32 bits: stored as a 64-bit integer.
        "tenure_days": pa.array([3_000_000_000 + i for i in range(n)], pa.int64()),
        "is_trial": pa.array([i % 3 == 0 for i in range(n)], pa.bool_()),
    }
    return pa.table({**base, **columns})


def _rows(url, domain=CARD):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text(f"select dt, {domain.id_column}, model_version from predictions order by 1, 2")
            return conn.execute(query).all()
    finally:
        engine.dispose()


def _read_back(url, day, domain=CARD):
    """The day's rows through the table definition (so event_time comes back as an aware datetime), by id."""
    table = predictions_table(domain)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(table).where(table.c.dt == day)
            return {getattr(row, domain.id_column): row for row in conn.execute(query)}
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
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), domain=CARD)
    db.replace_partition("2025-01-02", _predictions(["c"]), domain=CARD)
    db.replace_partition("2025-01-01", _predictions(["a", "d"], version="2"), domain=CARD)

    assert _rows(db_url) == [("2025-01-01", "a", "2"), ("2025-01-01", "d", "2"), ("2025-01-02", "c", "1")]
    assert db.count_partition("2025-01-01") == 2


def test_duplicate_ids_are_refused_and_previous_rows_kept(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), domain=CARD)
    with pytest.raises(ValueError, match=r"predictions for 2025-01-01 repeat 1 transaction_id\(s\), e.g. 'x'"):
        db.replace_partition("2025-01-01", _predictions(["x", "y", "x"]), domain=CARD)
    with pytest.raises(ValueError, match=r"repeat 2 transaction_id\(s\), e.g. 'q'.*previous rows are kept"):
        db.replace_partition("2025-01-01", _predictions(["q", "p", "p", "q", "z", "q"]), domain=CARD)
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_a_missing_business_column_is_refused_naming_it_and_previous_rows_kept(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), domain=CARD)
    without = _predictions(["c"]).drop_columns(["event_time", "merchant_category"])
    with pytest.raises(ValueError, match=r"lack column\(s\) 'event_time', 'merchant_category'.*previous rows are kept"):
        db.replace_partition("2025-01-01", without, domain=CARD)
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_a_failing_insert_rolls_back_the_delete(db_url, monkeypatch):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), domain=CARD)
    if db_url.startswith("sqlite"):
        # SQLite does not enforce VARCHAR lengths: fail the load after the day's new table got its rows, with a
        # real constraint violation from SQLite (a row without a score), where the index would be built.
        from batchinfer_assets.resources import prediction_db

        def failing_index(cursor, name):
            cursor.execute(f"INSERT INTO {name} (transaction_id, label, model_version) VALUES ('zz', 0, '1')")

        monkeypatch.setattr(prediction_db, "_index_day_table", failing_index)
        with pytest.raises(sa.exc.DBAPIError, match="NOT NULL constraint failed"):
            db.replace_partition("2025-01-01", _predictions(["c", "d"]), domain=CARD)
    else:
        # Every value of the day fits (refused before the write otherwise): fail after the COPY, with a real
        # constraint violation from PostgreSQL (a row without a score).
        from batchinfer_assets.resources import prediction_db

        copy_csv = prediction_db._copy_csv

        def failing_copy(conn, dt, table, run_id):
            copy_csv(conn, dt, table, run_id)
            conn.execute(sa.text("INSERT INTO predictions (dt, transaction_id, label, model_version) VALUES (:dt, 'zz', 0, '1')"), {"dt": dt})

        monkeypatch.setattr(prediction_db, "_copy_csv", failing_copy)
        with pytest.raises(sa.exc.IntegrityError, match="score"):
            db.replace_partition("2025-01-01", _predictions(["c"]), domain=CARD)
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("transaction_id", "t" * 129, r"1 transaction_id value\(s\) are longer than the 128 characters the column holds, first at transaction_id 'tttt"),
        ("customer_id", "c" * 129, r"1 customer_id value\(s\) are longer than the 128 characters"),
        ("merchant_category", "é" * 65, r"1 merchant_category value\(s\) are longer than the 64 characters"),
        ("model_version", "v" * 65, r"2 model_version value\(s\) are longer than the 64 characters the column holds, first at transaction_id 'a'"),
        ("customer_id", "c\x001", r"1 customer_id value\(s\) hold a NUL character"),
        ("merchant_category", "grocery\x00", r"1 merchant_category value\(s\) hold a NUL character"),
    ],
)
def test_values_the_table_cannot_hold_are_refused_naming_column_and_row(db_url, column, value, message):
    """PostgreSQL would fail the whole COPY on them without naming the column or the row; SQLite would keep them."""
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), domain=CARD)
    rows = _predictions(["a", "b"])
    values = rows.column(column).to_pylist()
    values[-1] = value
    if column == "model_version":
        values = [value] * len(values)
    bad = rows.set_column(rows.schema.get_field_index(column), column, pa.array(values, pa.string()))
    with pytest.raises(PredictionsRefusedError, match=rf"predictions for 2025-01-01: {message}.*previous rows are kept"):
        db.replace_partition("2025-01-01", bad, domain=CARD)
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_the_longest_values_the_table_holds_are_published(db_url):
    db = PredictionDatabaseResource(url=db_url)
    longest = {"customer_id": pa.array(["c" * 128], pa.string()), "merchant_category": pa.array(["é" * 64], pa.string())}
    db.replace_partition("2025-01-01", _predictions(["t" * 128], version="v" * 64, **longest), domain=CARD)
    row = _read_back(db_url, "2025-01-01")["t" * 128]
    assert (row.customer_id, row.merchant_category, row.model_version) == ("c" * 128, "é" * 64, "v" * 64)


def test_null_scores_labels_or_versions_are_refused_naming_the_column(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), domain=CARD)
    with pytest.raises(ValueError, match=r"have 1 null score\(s\).*previous rows are kept"):
        db.replace_partition("2025-01-01", _predictions(["c", "d"], score=pa.array([0.5, None], pa.float32())), domain=CARD)
    with pytest.raises(ValueError, match=r"have 2 null model_version\(s\)"):
        db.replace_partition("2025-01-01", _predictions(["c", "d"], model_version=pa.array([None, None], pa.string())), domain=CARD)
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_every_value_round_trips(db_url):
    """Awkward strings, nulls vs empty strings, float32 scores, doubles and event times come back as given."""
    n = 3000
    rng = np.random.default_rng(7)
    # Not in id order: the load sorts; odd characters exercise CSV quoting.
    ids = [f"tx-{i}\t'\"\\,;\n{i} é" for i in rng.permutation(n)]
    scores = rng.random(n, dtype=np.float32)
    midnight = dt.datetime(2025, 2, 3, tzinfo=dt.UTC)
    offsets_us = rng.integers(0, 86_400_000_000, n)
    times = [midnight + dt.timedelta(microseconds=int(us)) for us in offsets_us]
    amounts = [0.1, 1e-300, 123456.789, 0.0, 2.5e9] * (n // 5)
    rows = pa.table(
        {
            "model_version": pa.array(["12"] * n),
            "transaction_id": pa.array(ids, pa.large_string()),
            "score": pa.array(scores, pa.float32()),
            "label": pa.array((scores >= 0.5).astype(np.int8)),
            "model_name": pa.array([None if i % 7 == 0 else "fraud-detector" for i in range(n)], pa.string()),
            "customer_id": pa.array(["" if i % 11 == 0 else f"C{i},\"x\"" for i in range(n)]),
            # Another zone names the same instant; it is stored and read back in UTC. Built from epoch
            # microseconds (what an Arrow timestamp holds in any zone): pyarrow's conversion of Python
            # datetimes is off by the offset after a freezegun test has run in the same process.
            "event_time": pa.array(int(midnight.timestamp()) * 1_000_000 + offsets_us, pa.timestamp("us", tz="+01:00")),
            "amount": pa.array(amounts, pa.float64()),
            "merchant_category": pa.array([None if i % 13 == 0 else "travel" for i in range(n)]),
            "not_a_column_of_the_table": pa.array(range(n)),
        }
    )
    assert PredictionDatabaseResource(url=db_url).replace_partition("2025-02-03", rows, domain=CARD) == n

    stored = _read_back(db_url, "2025-02-03")
    assert sorted(stored) == sorted(ids)
    for i, tx in enumerate(ids):
        row = stored[tx]
        assert row.score == float(scores[i])  # the float32 value exactly
        assert row.label == int(scores[i] >= 0.5)
        assert row.model_name == (None if i % 7 == 0 else "fraud-detector")
        assert row.model_version == "12"
        assert row.customer_id == ("" if i % 11 == 0 else f"C{i},\"x\"")
        assert row.event_time == times[i] and row.event_time.utcoffset() == dt.timedelta(0)
        assert row.amount == amounts[i]
        assert row.merchant_category == (None if i % 13 == 0 else "travel")


def _plan(conn, query: str, params: dict) -> str:
    if conn.dialect.name == "sqlite":
        return "\n".join(str(row[-1]) for row in conn.execute(sa.text(f"EXPLAIN QUERY PLAN {query}"), params))
    return "\n".join(row[0] for row in conn.execute(sa.text(f"EXPLAIN {query}"), params))


@pytest.mark.parametrize("domain", [CARD, CHURN], ids=["card", "churn"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_point_lookup_and_top_scores_are_index_lookups(backend, domain, tmp_path, request):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/predictions.db"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database("preds"))
    db = PredictionDatabaseResource(url=url)
    rng = np.random.default_rng(0)
    scores = {}
    # Days of two years: SQLite's view reaches them through one view per year.
    days = ("2024-12-31", "2025-01-01", "2025-01-02", "2025-01-03")
    for day in days:
        n = 5000
        scores[day] = rng.random(n, dtype=np.float32)
        make = _predictions if domain is CARD else _churn_predictions
        db.replace_partition(day, make([f"{day}-{i}" for i in range(n)], score=pa.array(scores[day])), domain=domain)
    with db.engine.connect() as conn:
        if backend == "postgresql":
            conn.execute(sa.text("ANALYZE predictions"))
        key = domain.id_column
        lookup_query = f"SELECT * FROM predictions WHERE {key} = :tx"
        lookup = _plan(conn, lookup_query, {"tx": "2025-01-02-17"})
        top_query = "SELECT * FROM predictions WHERE dt = :dt ORDER BY score DESC LIMIT 100"
        top = _plan(conn, top_query, {"dt": "2025-01-02"})
        found = conn.execute(sa.text(lookup_query), {"tx": "2025-01-02-17"}).all()
        highest = conn.execute(sa.text(top_query), {"dt": "2025-01-02"}).all()
    assert [(row.dt, getattr(row, key), row.score) for row in found] == [("2025-01-02", "2025-01-02-17", float(scores["2025-01-02"][17]))]
    assert [row.score for row in highest] == sorted(map(float, scores["2025-01-02"]), reverse=True)[:100]
    assert {row.dt for row in highest} == {"2025-01-02"}
    if backend == "sqlite":
        # Every day's table is searched through its primary key; the day's top scores walk its score index
        # (the other days' arms are cut by the constant dt of their view before reading a row).
        searches = [line for line in lookup.splitlines() if line.startswith(("SCAN", "SEARCH"))]
        assert searches == [f"SEARCH predictions_day_{d.replace('-', '')} USING PRIMARY KEY ({key}=?)" for d in days], lookup
        scans = [line for line in top.splitlines() if line.startswith(("SCAN", "SEARCH"))]
        assert scans == [f"SCAN predictions_day_{d.replace('-', '')} USING INDEX predictions_day_{d.replace('-', '')}_score" for d in days], top
        assert "TEMP B-TREE" not in top, top
    else:
        assert f"Index Scan using ix_predictions_{key} on predictions" in lookup, lookup
        assert "Index Scan Backward using ix_predictions_dt_score on predictions" in top, top
        assert "Seq Scan" not in lookup + top and "Sort" not in top, (lookup, top)
    db.engine.dispose()


_OLD_SCHEMA = {
    "sqlite": [
        "CREATE TABLE predictions (dt VARCHAR(10) NOT NULL, transaction_id VARCHAR(128) NOT NULL, score FLOAT NOT NULL,"
        " label SMALLINT NOT NULL, model_name VARCHAR(256), model_version VARCHAR(64) NOT NULL,"
        " PRIMARY KEY (dt, transaction_id))",
        "CREATE INDEX ix_predictions_dt ON predictions (dt)",
    ],
}
_OLD_SCHEMA["postgresql"] = _OLD_SCHEMA["sqlite"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_table_from_the_previous_schema_is_upgraded_keeping_its_rows(backend, tmp_path, request):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/predictions.db"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database("preds"))
    old = sa.create_engine(url)
    with old.begin() as conn:
        for statement in _OLD_SCHEMA[backend]:
            conn.execute(sa.text(statement))
        conn.execute(
            sa.text("INSERT INTO predictions VALUES ('2024-12-31', 'old-1', 0.5, 1, 'fraud-detector', '3')")
        )
    old.dispose()

    db = PredictionDatabaseResource(url=url)
    db.replace_partition("2025-01-01", _predictions(["new-1"]), domain=CARD)

    inspector = sa.inspect(db.engine)
    assert [c["name"] for c in inspector.get_columns("predictions")] == [c.name for c in predictions_table(CARD).columns]
    if backend == "sqlite":
        # The single table became one table per day behind a view of the same name.
        assert "predictions" in inspector.get_view_names() and "predictions" not in inspector.get_table_names()
        for day in ("20241231", "20250101"):
            assert [ix["column_names"] for ix in inspector.get_indexes(f"predictions_day_{day}")] == [["score"]]
    else:
        indexes = {ix["name"] for ix in inspector.get_indexes("predictions")}
        assert {"ix_predictions_transaction_id", "ix_predictions_dt_score"} <= indexes
        assert "ix_predictions_dt" not in indexes  # covered by the primary key, which leads with dt
    kept = _read_back(url, "2024-12-31")["old-1"]
    assert (kept.score, kept.label, kept.model_version, kept.customer_id, kept.event_time) == (0.5, 1, "3", None, None)
    new = _read_back(url, "2025-01-01")["new-1"]
    assert new.event_time == dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC) and new.merchant_category == "grocery"
    db.engine.dispose()

    # A second resource finds nothing left to upgrade.
    again = PredictionDatabaseResource(url=url)
    assert again.count_partition("2024-12-31") == 1
    again.engine.dispose()


def test_a_sqlite_table_of_the_previous_version_becomes_day_tables_with_every_value_kept(tmp_path):
    """0.4 kept every day in one SQLite table; its rows come back identical through the view."""
    url = f"sqlite:///{tmp_path}/predictions.db"
    engine = sa.create_engine(url)
    previous = sa.MetaData()
    table = predictions_table(CARD).to_metadata(previous)  # the single table as 0.4 created it
    with engine.begin() as conn:
        table.create(conn)
        conn.execute(
            table.insert(),
            [
                {"dt": day, "transaction_id": f"{day}-{i}", "score": i / 7, "label": i % 2, "model_name": "fraud-detector",
                 "model_version": "3", "customer_id": f"C{i}", "event_time": dt.datetime(2025, 1, 1, i, tzinfo=dt.UTC),
                 "amount": i * 1.5, "merchant_category": None if i == 2 else "fuel", "scoring_run_id": 4}
                for day in ("2025-01-01", "2025-01-02") for i in range(5)
            ],
        )
    before = {day: _read_back(url, day) for day in ("2025-01-01", "2025-01-02")}
    engine.dispose()

    # Another domain leaves it as it is.
    with pytest.raises(PredictionsRefusedError, match=r"keyed by 'transaction_id' \(besides dt\), but domain 'customer_churn'"):
        PredictionDatabaseResource(url=url).ensure_schema(domain=CHURN)
    db = PredictionDatabaseResource(url=url)
    db.ensure_schema(domain=CARD)
    assert db.count_partition("2025-01-02") == 5
    after = {day: _read_back(url, day) for day in ("2025-01-01", "2025-01-02")}
    assert after == before and len(after["2025-01-01"]) == 5
    assert set(sa.inspect(db.engine).get_table_names()) >= {"predictions_day_20250101", "predictions_day_20250102"}


def test_a_null_transaction_id_is_refused(db_url):
    db = PredictionDatabaseResource(url=db_url)
    with pytest.raises(ValueError, match=r"predictions for 2025-01-01 have 1 null transaction_id"):
        db.replace_partition("2025-01-01", _predictions(["a", None]), domain=CARD)


def test_postgres_concurrent_publishes_of_one_day_never_collide(postgres_server):
    url = postgres_server.url(postgres_server.create_database("preds"))
    ids = [f"t{i}" for i in range(2000)]
    errors = []

    def publish(version: str) -> None:
        db = PredictionDatabaseResource(url=url)
        try:
            for _ in range(3):
                db.replace_partition("2025-01-01", _predictions(ids, version=version), domain=CARD)
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
        db.replace_partition("2025-01-01", _predictions(["a"]), domain=CARD)
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


def _scoring_run(run_id: str, version: str) -> dict:
    from batchinfer_assets.resources.prediction_db import SCORING_RUN_FIELDS

    run = {name: None for name in SCORING_RUN_FIELDS}
    run.update(
        dagster_run_id=run_id,
        model_uri="models:/fraud-detector@champion",
        pinned_model_uri=f"models:/fraud-detector/{version}",
        model_version=version,
        artifact_checksum=f"checksum-of-v{version}",
        # The format the pipeline records: a 64-character digest with its algorithm's prefix.
        input_snapshot_hash="sha256:" + "ab" * 32,
        engine="local",
        batch_size=65536,
    )
    return run


def test_each_published_row_links_to_the_scoring_run_that_produced_it(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), _scoring_run("run-1", "1"), domain=CARD)
    db.replace_partition("2025-01-02", _predictions(["c"]), _scoring_run("run-1", "1"), domain=CARD)
    # The day re-scored by another run with version 2 and published twice: one scoring run row for it.
    db.replace_partition("2025-01-01", _predictions(["a", "d"], version="2"), _scoring_run("run-2", "2"), domain=CARD)
    db.replace_partition("2025-01-01", _predictions(["a", "d"], version="2"), _scoring_run("run-2", "2"), domain=CARD)

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            joined = conn.execute(
                sa.text(
                    "SELECT p.dt, p.transaction_id, s.dagster_run_id, s.pinned_model_uri, s.artifact_checksum "
                    "FROM predictions p JOIN scoring_runs s ON s.id = p.scoring_run_id ORDER BY 1, 2"
                )
            ).all()
            runs = conn.execute(sa.text("SELECT dagster_run_id, dt FROM scoring_runs ORDER BY 1, 2")).all()
            published_at = conn.execute(sa.select(scoring_runs_table.c.published_at)).scalars().all()
    finally:
        engine.dispose()
    # Read back through the table definition as aware UTC datetimes (SQLite stores the text SQLAlchemy writes).
    now = dt.datetime.now(dt.UTC)
    assert all(dt.timedelta(0) <= now - at < dt.timedelta(minutes=5) and at.utcoffset() == dt.timedelta(0) for at in published_at)
    assert [tuple(r) for r in joined] == [
        ("2025-01-01", "a", "run-2", "models:/fraud-detector/2", "checksum-of-v2"),
        ("2025-01-01", "d", "run-2", "models:/fraud-detector/2", "checksum-of-v2"),
        ("2025-01-02", "c", "run-1", "models:/fraud-detector/1", "checksum-of-v1"),
    ]
    # The history of scorings stays (a lineage log); each (run, day) once.
    assert [tuple(r) for r in runs] == [("run-1", "2025-01-01"), ("run-1", "2025-01-02"), ("run-2", "2025-01-01")]


def test_a_scoring_runs_table_of_0_3_0_is_widened_on_postgres_and_publishing_works(postgres_server):
    """0.3.0 created input_snapshot_hash as VARCHAR(64): every publication to PostgreSQL failed (71-character hashes)."""
    url = postgres_server.url(postgres_server.create_database("preds"))
    db = PredictionDatabaseResource(url=url)
    db.replace_partition("2025-01-01", _predictions(["a"]), _scoring_run("run-1", "1"), domain=CARD)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM predictions"))
            conn.execute(sa.text("DELETE FROM scoring_runs"))
            conn.execute(sa.text("ALTER TABLE scoring_runs ALTER COLUMN input_snapshot_hash TYPE VARCHAR(64)"))
        db = PredictionDatabaseResource(url=url)
        assert db.replace_partition("2025-01-01", _predictions(["a", "b"]), _scoring_run("run-1", "1"), domain=CARD) == 2
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT input_snapshot_hash FROM scoring_runs")).scalar_one()
    finally:
        engine.dispose()
    assert stored == "sha256:" + "ab" * 32


def _columns(url):
    engine = sa.create_engine(url)
    try:
        return [column["name"] for column in sa.inspect(engine).get_columns("predictions")]
    finally:
        engine.dispose()


def test_another_domains_day_is_published_replaced_and_read_back_in_its_own_columns(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _churn_predictions(["a", "b"]), domain=CHURN)
    db.replace_partition("2025-01-02", _churn_predictions(["c"]), domain=CHURN)
    republished = _churn_predictions(["d", "a"], version="2", plan=pa.array(["gold", None], pa.large_string()))
    assert db.replace_partition("2025-01-01", republished, domain=CHURN) == 2

    assert _rows(db_url, CHURN) == [("2025-01-01", "a", "2"), ("2025-01-01", "d", "2"), ("2025-01-02", "c", "1")]
    assert db.count_partition("2025-01-01") == 2
    assert _columns(db_url) == [
        "dt", "customer_day_id", "score", "label", "model_name", "model_version",
        "customer_id", "plan", "monthly_fee", "tenure_days", "is_trial", "scoring_run_id",
    ]
    stored = _read_back(db_url, "2025-01-01", CHURN)
    read = {
        key: (row.score, row.label, row.model_name, row.customer_id, row.plan, row.monthly_fee, row.tenure_days, row.is_trial)
        for key, row in stored.items()
    }
    assert read == {
        "d": (0.75, 1, "churn-model", "K0", "gold", 9.99, 3_000_000_000, True),
        "a": (0.75, 1, "churn-model", "K1", None, 10.99, 3_000_000_001, False),
    }


def test_another_domains_rows_are_refused_naming_its_id_column(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _churn_predictions(["a", "b"]), domain=CHURN)
    refused = r".*previous rows are kept"
    cases = [
        (_churn_predictions(["x", "y", "x"]), r"predictions for 2025-01-01 repeat 1 customer_day_id\(s\), e.g. 'x'"),
        (_churn_predictions(["x", None]), r"have 1 null customer_day_id\(s\)"),
        (_churn_predictions(["x"]).drop_columns(["tenure_days"]), r"lack column\(s\) 'tenure_days'"),
        (_churn_predictions(["x", "y"], plan=pa.array(["basic", "p" * 129])),
         r"1 plan value\(s\) are longer than the 128 characters the column holds, first at customer_day_id 'y'"),
        (_churn_predictions(["x", "y" * 129]),
         r"1 customer_day_id value\(s\) are longer than the 128 characters the column holds, first at customer_day_id 'yyyy"),
        (_churn_predictions(["x", "y"], customer_id=pa.array(["K\x001", "K2"])),
         r"1 customer_id value\(s\) hold a NUL character, which PostgreSQL text cannot store, first at customer_day_id 'x'"),
        (_churn_predictions(["x"], monthly_fee=pa.array(["not a number"])), r"column 'monthly_fee' of type string"),
        (_churn_predictions(["x"], tenure_days=pa.array([1.5])), r"column 'tenure_days' of type double"),
    ]
    for rows, message in cases:
        with pytest.raises(PredictionsRefusedError, match=message + refused):
            db.replace_partition("2025-01-01", rows, domain=CHURN)
    assert _rows(db_url, CHURN) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_the_longest_values_another_domains_table_holds_are_published(db_url):
    db = PredictionDatabaseResource(url=db_url)
    rows = _churn_predictions(["k" * 128], customer_id=pa.array(["c" * 128]), plan=pa.array(["é" * 128]))
    db.replace_partition("2025-01-01", rows, domain=CHURN)
    row = _read_back(db_url, "2025-01-01", CHURN)["k" * 128]
    assert (row.customer_id, row.plan) == ("c" * 128, "é" * 128)


@pytest.mark.parametrize(("first", "second"), [(CARD, CHURN), (CHURN, CARD)], ids=["card-then-churn", "churn-then-card"])
def test_a_database_holding_another_domains_predictions_is_refused_naming_table_key_and_domain(db_url, first, second):
    rows = {CARD.name: _predictions(["a"]), CHURN.name: _churn_predictions(["a"])}
    PredictionDatabaseResource(url=db_url).replace_partition("2025-01-01", rows[first.name], domain=first)

    db = PredictionDatabaseResource(url=db_url)
    message = (
        rf"table predictions in the prediction database \(.*\) is keyed by '{first.id_column}' \(besides dt\), but"
        rf" domain '{second.name}' identifies its rows by '{second.id_column}'.*nothing was published"
    )
    with pytest.raises(PredictionsRefusedError, match=message):
        db.replace_partition("2025-01-02", rows[second.name], domain=second)
    assert _rows(db_url, first) == [("2025-01-01", "a", "1")]
    assert db.count_partition("2025-01-02") == 0


def test_a_business_column_the_domain_gains_is_added_and_older_days_read_it_as_null(db_url):
    before = _churn_domain(business_columns=("customer_id", "plan"))
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _churn_predictions(["a"]), domain=before)
    db.replace_partition("2025-01-02", _churn_predictions(["b"]), domain=before)

    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-02", _churn_predictions(["b"]), domain=CHURN)  # an old day republished
    db.replace_partition("2025-01-03", _churn_predictions(["c"]), domain=CHURN)  # a new day

    # PostgreSQL appends the new columns after the existing ones; SQLite's view lists the domain's order.
    assert {"monthly_fee", "tenure_days", "is_trial"} <= set(_columns(db_url))
    old = _read_back(db_url, "2025-01-01", CHURN)["a"]
    assert (old.plan, old.monthly_fee, old.tenure_days, old.is_trial) == ("premium", None, None, None)
    for day, key in (("2025-01-02", "b"), ("2025-01-03", "c")):
        new = _read_back(db_url, day, CHURN)[key]
        assert (new.plan, new.monthly_fee, new.tenure_days, new.is_trial) == ("premium", 9.99, 3_000_000_000, True)


def test_published_text_lengths_name_the_id_and_text_business_columns():
    assert published_text_lengths(CARD) == {"transaction_id": 128, "customer_id": 128, "merchant_category": 64}
    assert published_text_lengths(CHURN) == {"customer_day_id": 128, "customer_id": 128, "plan": 128}


def test_a_business_column_of_a_type_the_database_cannot_hold_is_refused_naming_it(tmp_path):
    domain = Domain(
        name="with_dates",
        id_column="row_id",
        landing_columns={"row_id": pa.string(), "birthday": pa.date32()},
        row_schema=pandera.DataFrameSchema({}),
        features=lambda frame: frame,
        feature_descriptions={"f": "a feature"},
        business_columns=("birthday",),
    )
    db = PredictionDatabaseResource(url=f"sqlite:///{tmp_path}/predictions.db")
    with pytest.raises(ValueError, match=r"domain 'with_dates': business column 'birthday' of type date32\[day\] cannot be"):
        db.replace_partition("2025-01-01", pa.table({"row_id": ["a"]}), domain=domain)


def _awkward_day(n: int) -> pa.Table:
    """A day of varied rows in no id order: odd characters, nulls beside empty strings, float32 scores, event times."""
    rng = np.random.default_rng(n)
    ids = [f"tx-{i}\t'\"\\,;\n{i} é" for i in rng.permutation(n)]
    scores = rng.random(n, dtype=np.float32)
    midnight = dt.datetime(2025, 2, 3, tzinfo=dt.UTC)
    return _predictions(
        ids,
        score=pa.array(scores, pa.float32()),
        label=pa.array((scores >= 0.5).astype(np.int8)),
        model_name=pa.array([None if i % 7 == 0 else "fraud-detector" for i in range(n)], pa.string()),
        customer_id=pa.array(["" if i % 5 == 0 else f"C,{i}\"" for i in range(n)], pa.string()),
        event_time=pa.array([midnight + dt.timedelta(microseconds=int(us)) for us in rng.integers(0, 86_400_000_000, n)], EVENT_TIME),
        amount=pa.array(rng.random(n) * 1000, pa.float64()),
        merchant_category=pa.array([None if i % 11 == 0 else "grocery" for i in range(n)], pa.string()),
    )


def _day_rows(url, day):
    """The day's rows, every column but dt and the scoring run's id, by id; and whether each links to a scoring run."""
    rows = _read_back(url, day)
    linked = all(row.scoring_run_id is not None for row in rows.values())
    return {key: tuple(row)[1:-1] for key, row in rows.items()}, linked


def _chunks(table: pa.Table, size: int):
    """The table in slices of `size` rows, produced one at a time."""
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size)


def test_a_day_loaded_in_chunks_stores_exactly_the_rows_of_one_table(db_url):
    day = _awkward_day(300)
    db = PredictionDatabaseResource(url=db_url)
    assert db.replace_partition("2025-01-01", day, _scoring_run("run-1", "1"), domain=CARD) == 300
    assert db.replace_partition("2025-01-02", _chunks(day, 7), _scoring_run("run-1", "1"), domain=CARD) == 300
    assert db.replace_partition("2025-01-03", day.to_batches(max_chunksize=7), _scoring_run("run-1", "1"), domain=CARD) == 300

    whole, linked = _day_rows(db_url, "2025-01-01")
    assert len(whole) == 300 and linked
    assert _day_rows(db_url, "2025-01-02") == (whole, True)
    assert _day_rows(db_url, "2025-01-03") == (whole, True)

    # Published again in chunks: replaced, never appended; no chunks at all: the day is emptied.
    assert db.replace_partition("2025-01-02", _chunks(day.slice(0, 20), 3), domain=CARD) == 20
    assert db.count_partition("2025-01-02") == 20
    assert db.replace_partition("2025-01-03", iter([]), domain=CARD) == 0
    assert db.count_partition("2025-01-03") == 0
    assert _day_rows(db_url, "2025-01-01") == (whole, True)


def _failing_after(chunks, n):
    """`chunks`, then a failure while the next one is produced (a spill file gone, say)."""
    for i, chunk in enumerate(chunks):
        if i == n:
            raise OSError("bucket file vanished")
        yield chunk


def _with_value(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type))


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        ("unstorable", PredictionsRefusedError, r"predictions for 2025-01-01: 1 customer_id value\(s\) are longer than the 128 characters the column holds, first at transaction_id 'n40'.*previous rows are kept"),
        ("nul", PredictionsRefusedError, r"predictions for 2025-01-01: 1 merchant_category value\(s\) hold a NUL character.*first at transaction_id 'n41'"),
        ("null score", PredictionsRefusedError, r"predictions for 2025-01-01 have 1 null score\(s\).*previous rows are kept"),
        ("missing column", PredictionsRefusedError, r"predictions for 2025-01-01 lack column\(s\) 'amount'"),
        ("producer fails", OSError, "bucket file vanished"),
    ],
)
def test_a_chunk_failing_late_in_the_day_keeps_the_previous_publication_whole(db_url, failure, error, message):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), _scoring_run("run-1", "1"), domain=CARD)
    chunks = [_predictions([f"n{i}" for i in range(start, start + 7)], version="2") for start in range(0, 49, 7)]
    late = chunks[5]  # ids n35..n41
    if failure == "unstorable":
        chunks[5] = _with_value(late, "customer_id", 5, "c" * 129)
    elif failure == "nul":
        chunks[5] = _with_value(late, "merchant_category", 6, "grocery\x00")
    elif failure == "null score":
        chunks[5] = _with_value(late, "score", 2, None)
    elif failure == "missing column":
        chunks[5] = late.drop_columns(["amount"])
    rows = _failing_after(chunks, 5) if failure == "producer fails" else iter(chunks)

    with pytest.raises(error, match=message):
        db.replace_partition("2025-01-01", rows, _scoring_run("run-2", "2"), domain=CARD)

    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            runs = conn.execute(sa.text("SELECT dagster_run_id FROM scoring_runs")).scalars().all()
    finally:
        engine.dispose()
    assert runs == ["run-1"], "the failed publication's scoring run is rolled back with its rows"


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([["x", "y"], ["z", "x"]], r"repeat 1 transaction_id\(s\), e.g. 'x' \(chunk 2 of the day's rows repeats ids of earlier chunks\)"),
        ([["p", "q", "r"], ["s"], ["t", "r", "u", "q"]], r"repeat 2 transaction_id\(s\), e.g. 'q' \(chunk 3 of"),
    ],
)
def test_an_id_repeated_across_chunks_is_refused_naming_it_and_previous_rows_kept(db_url, chunks, message):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), domain=CARD)
    with pytest.raises(PredictionsRefusedError, match=rf"predictions for 2025-01-01 {message}.*previous rows are kept"):
        db.replace_partition("2025-01-01", (_predictions(ids, version="2") for ids in chunks), domain=CARD)
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]
