import datetime as dt
import socket
import threading

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from batchinfer_assets.resources.prediction_db import (
    PredictionDatabaseConnectionError,
    PredictionDatabaseResource,
    PredictionsRefusedError,
    predictions_table,
    scoring_runs_table,
)

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


def _rows(url):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text("select dt, transaction_id, model_version from predictions order by 1, 2")
            return conn.execute(query).all()
    finally:
        engine.dispose()


def _read_back(url, day):
    """The day's rows through the table definition (so event_time comes back as an aware datetime), by id."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(predictions_table).where(predictions_table.c.dt == day)
            return {row.transaction_id: row for row in conn.execute(query)}
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
    with pytest.raises(ValueError, match=r"repeat 2 transaction_id\(s\), e.g. 'q'.*previous rows are kept"):
        db.replace_partition("2025-01-01", _predictions(["q", "p", "p", "q", "z", "q"]))
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_a_missing_business_column_is_refused_naming_it_and_previous_rows_kept(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]))
    without = _predictions(["c"]).drop_columns(["event_time", "merchant_category"])
    with pytest.raises(ValueError, match=r"lack column\(s\) 'event_time', 'merchant_category'.*previous rows are kept"):
        db.replace_partition("2025-01-01", without)
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_a_failing_insert_rolls_back_the_delete(db_url, monkeypatch):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]))
    if db_url.startswith("sqlite"):
        # SQLite does not enforce VARCHAR lengths: fail the load after the day's new table got its rows, with a
        # real constraint violation from SQLite (a row without a score), where the index would be built.
        from batchinfer_assets.resources import prediction_db

        def failing_index(cursor, name):
            cursor.execute(f"INSERT INTO {name} (transaction_id, label, model_version) VALUES ('zz', 0, '1')")

        monkeypatch.setattr(prediction_db, "_index_day_table", failing_index)
        with pytest.raises(sa.exc.DBAPIError, match="NOT NULL constraint failed"):
            db.replace_partition("2025-01-01", _predictions(["c", "d"]))
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
            db.replace_partition("2025-01-01", _predictions(["c"]))
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
    db.replace_partition("2025-01-01", _predictions(["a", "b"]))
    rows = _predictions(["a", "b"])
    values = rows.column(column).to_pylist()
    values[-1] = value
    if column == "model_version":
        values = [value] * len(values)
    bad = rows.set_column(rows.schema.get_field_index(column), column, pa.array(values, pa.string()))
    with pytest.raises(PredictionsRefusedError, match=rf"predictions for 2025-01-01: {message}.*previous rows are kept"):
        db.replace_partition("2025-01-01", bad)
    assert _rows(db_url) == [("2025-01-01", "a", "1"), ("2025-01-01", "b", "1")]


def test_the_longest_values_the_table_holds_are_published(db_url):
    db = PredictionDatabaseResource(url=db_url)
    longest = {"customer_id": pa.array(["c" * 128], pa.string()), "merchant_category": pa.array(["é" * 64], pa.string())}
    db.replace_partition("2025-01-01", _predictions(["t" * 128], version="v" * 64, **longest))
    row = _read_back(db_url, "2025-01-01")["t" * 128]
    assert (row.customer_id, row.merchant_category, row.model_version) == ("c" * 128, "é" * 64, "v" * 64)


def test_null_scores_labels_or_versions_are_refused_naming_the_column(db_url):
    db = PredictionDatabaseResource(url=db_url)
    db.replace_partition("2025-01-01", _predictions(["a", "b"]))
    with pytest.raises(ValueError, match=r"have 1 null score\(s\).*previous rows are kept"):
        db.replace_partition("2025-01-01", _predictions(["c", "d"], score=pa.array([0.5, None], pa.float32())))
    with pytest.raises(ValueError, match=r"have 2 null model_version\(s\)"):
        db.replace_partition("2025-01-01", _predictions(["c", "d"], model_version=pa.array([None, None], pa.string())))
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
    assert PredictionDatabaseResource(url=db_url).replace_partition("2025-02-03", rows) == n

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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_point_lookup_and_top_scores_are_index_lookups(backend, tmp_path, request):
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
        db.replace_partition(day, _predictions([f"{day}-{i}" for i in range(n)], score=pa.array(scores[day])))
    with db.engine.connect() as conn:
        if backend == "postgresql":
            conn.execute(sa.text("ANALYZE predictions"))
        lookup_query = "SELECT * FROM predictions WHERE transaction_id = :tx"
        lookup = _plan(conn, lookup_query, {"tx": "2025-01-02-17"})
        top_query = "SELECT * FROM predictions WHERE dt = :dt ORDER BY score DESC LIMIT 100"
        top = _plan(conn, top_query, {"dt": "2025-01-02"})
        found = conn.execute(sa.text(lookup_query), {"tx": "2025-01-02-17"}).all()
        highest = conn.execute(sa.text(top_query), {"dt": "2025-01-02"}).all()
    assert [(row.dt, row.transaction_id, row.score) for row in found] == [("2025-01-02", "2025-01-02-17", float(scores["2025-01-02"][17]))]
    assert [row.score for row in highest] == sorted(map(float, scores["2025-01-02"]), reverse=True)[:100]
    assert {row.dt for row in highest} == {"2025-01-02"}
    if backend == "sqlite":
        # Every day's table is searched through its primary key; the day's top scores walk its score index
        # (the other days' arms are cut by the constant dt of their view before reading a row).
        searches = [line for line in lookup.splitlines() if line.startswith(("SCAN", "SEARCH"))]
        assert searches == [f"SEARCH predictions_day_{d.replace('-', '')} USING PRIMARY KEY (transaction_id=?)" for d in days], lookup
        scans = [line for line in top.splitlines() if line.startswith(("SCAN", "SEARCH"))]
        assert scans == [f"SCAN predictions_day_{d.replace('-', '')} USING INDEX predictions_day_{d.replace('-', '')}_score" for d in days], top
        assert "TEMP B-TREE" not in top, top
    else:
        assert "Index Scan using ix_predictions_transaction_id on predictions" in lookup, lookup
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
    db.replace_partition("2025-01-01", _predictions(["new-1"]))

    inspector = sa.inspect(db.engine)
    assert [c["name"] for c in inspector.get_columns("predictions")] == [c.name for c in predictions_table.columns]
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
    table = predictions_table.to_metadata(previous)  # the single table as 0.4 created it
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

    db = PredictionDatabaseResource(url=url)
    assert db.count_partition("2025-01-02") == 5
    after = {day: _read_back(url, day) for day in ("2025-01-01", "2025-01-02")}
    assert after == before and len(after["2025-01-01"]) == 5
    assert set(sa.inspect(db.engine).get_table_names()) >= {"predictions_day_20250101", "predictions_day_20250102"}


def test_a_null_transaction_id_is_refused(db_url):
    db = PredictionDatabaseResource(url=db_url)
    with pytest.raises(ValueError, match=r"predictions for 2025-01-01 have 1 null transaction_id"):
        db.replace_partition("2025-01-01", _predictions(["a", None]))


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
    db.replace_partition("2025-01-01", _predictions(["a", "b"]), _scoring_run("run-1", "1"))
    db.replace_partition("2025-01-02", _predictions(["c"]), _scoring_run("run-1", "1"))
    # The day re-scored by another run with version 2 and published twice: one scoring run row for it.
    db.replace_partition("2025-01-01", _predictions(["a", "d"], version="2"), _scoring_run("run-2", "2"))
    db.replace_partition("2025-01-01", _predictions(["a", "d"], version="2"), _scoring_run("run-2", "2"))

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
    db.replace_partition("2025-01-01", _predictions(["a"]), _scoring_run("run-1", "1"))
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM predictions"))
            conn.execute(sa.text("DELETE FROM scoring_runs"))
            conn.execute(sa.text("ALTER TABLE scoring_runs ALTER COLUMN input_snapshot_hash TYPE VARCHAR(64)"))
        db = PredictionDatabaseResource(url=url)
        assert db.replace_partition("2025-01-01", _predictions(["a", "b"]), _scoring_run("run-1", "1")) == 2
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT input_snapshot_hash FROM scoring_runs")).scalar_one()
    finally:
        engine.dispose()
    assert stored == "sha256:" + "ab" * 32
