"""Publishing predictions to the prediction database: the bulk path against the previous code, and lookups.

    python benchmarks/publishing.py --rows 1000000                      # (a) publish, (c) SQLite's own floor
    python benchmarks/publishing.py --rows 1000000 --days 30 --sections lookup   # (b) lookups on 30 days

(a) publishes one synthetic day of `--rows` rows with `PredictionDatabaseResource.replace_partition`
    three times (into an empty database, into one already holding another day, and again over that
    day), to SQLite and to PostgreSQL through psycopg 3 and psycopg2, side by side with the code this
    replaced (copied below as `old_replace_partition`): once as it was (six columns, its own schema) and
    once writing the same ten columns into the single ten-column table; and, for SQLite, side by side with
    the previous bulk path (copied below as `single_table_replace_partition`: one table for every day,
    sqlite3 `executemany` over column lists), which the table-per-day layout and the ADBC load replaced.
(b) builds a table of `--days` days of `--rows` rows each through the same path, then times 10,000
    random point lookups by transaction_id (day not given) and 10,000 "top 100 scores of a random day".
(c) times SQLite itself, with no Python per row (INSERT ... SELECT from a temporary table), for each
    index the single table carries, and for a table of the day's own: the floor any loading code sits on.

PostgreSQL is a throwaway server started with the tests' helper (batchinfer_assets_tests/postgres/server.py:
Debian's binaries, a temp data directory, fsync=off, other settings default) unless --postgres-url names one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchinfer_assets.domains.card_transactions import domain as CARD  # noqa: E402
from batchinfer_assets.domains.card_transactions.synthetic import MERCHANT_CATEGORIES  # noqa: E402
from batchinfer_assets.resources.prediction_db import PredictionDatabaseResource, _layout  # noqa: E402

predictions_table = _layout(CARD).table

FIRST_DAY = dt.date(2025, 1, 1)


def make_day(day: dt.date, rows: int, seed: int) -> pa.Table:
    """A day of predictions as the publishing asset hands it over.

    Ids follow the synthetic source's format (YYYYMMDD-NNNNNNN) but arrive shuffled, so the load pays for
    sorting them (the real snapshot arrives sorted, which skips that step).
    """
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(rows)
    ids = pc.binary_join_element_wise(
        f"{day:%Y%m%d}-", pc.utf8_lpad(pa.array(numbers).cast(pa.string()), 7, "0"), ""
    )
    customers = pc.binary_join_element_wise(
        "C", pc.utf8_lpad(pa.array(rng.integers(0, max(rows // 5, 1), rows)).cast(pa.string()), 7, "0"), ""
    )
    micros = rng.integers(0, 86_400_000_000, rows)
    event_time = np.datetime64(day.isoformat(), "us") + micros.astype("timedelta64[us]")
    score = rng.random(rows, dtype=np.float32)
    return pa.table(
        {
            "transaction_id": ids,
            "score": pa.array(score, pa.float32()),
            "label": pa.array((score >= 0.5).astype(np.int8)),
            "model_name": pa.array(["fraud-detector"] * rows),
            "model_version": pa.array(["7"] * rows),
            "customer_id": customers,
            "event_time": pa.array(event_time, pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
            "amount": pa.array(np.round(rng.lognormal(3.0, 1.0, rows), 2)),
            "merchant_category": pa.array(np.array(MERCHANT_CATEGORIES)[rng.integers(0, len(MERCHANT_CATEGORIES), rows)]),
        }
    )


# ---------------------------------------------------------------------------------------------------
# The previous code, as it was before the bulk path (git: batchinfer_assets/resources/prediction_db.py
# at 622d5ab), reduced to its load: a DataFrame in, row tuples built in Python, inserted with SQLAlchemy
# in chunks of 50,000 (SQLite, psycopg2) or COPY'd row by row with psycopg 3's write_row.
# `columns` picks the six columns it wrote, or the current ten.
# ---------------------------------------------------------------------------------------------------
OLD_COLUMNS = ("dt", "transaction_id", "score", "label", "model_name", "model_version")
NEW_COLUMNS = tuple(c.name for c in predictions_table.columns)
_INSERT_CHUNK = 50_000

old_metadata = sa.MetaData()
old_predictions_table = sa.Table(
    "predictions",
    old_metadata,
    sa.Column("dt", sa.String(10), primary_key=True),
    sa.Column("transaction_id", sa.String(128), primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("label", sa.SmallInteger, nullable=False),
    sa.Column("model_name", sa.String(256)),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Index("ix_predictions_dt", "dt"),
)


def _nullable_strings(column: pd.Series) -> list[str | None]:
    return [None if pd.isna(value) else str(value) for value in column.tolist()]


def old_replace_partition(engine: sa.Engine, table: sa.Table, dt_: str, predictions: pd.DataFrame) -> int:
    duplicated = predictions["transaction_id"][predictions["transaction_id"].duplicated()]
    if not duplicated.empty:
        raise ValueError(f"predictions for {dt_} repeat {duplicated.nunique()} transaction_id(s)")
    columns = [c.name for c in table.columns if c.name != "scoring_run_id"]  # added after this code
    values = [
        [dt_] * len(predictions),
        predictions["transaction_id"].astype(str).tolist(),
        predictions["score"].astype(float).tolist(),
        predictions["label"].astype(int).tolist(),
        _nullable_strings(predictions["model_name"]),
        predictions["model_version"].astype(str).tolist(),
    ]
    if len(columns) > len(OLD_COLUMNS):  # the same loop, carrying the business columns too
        values += [
            _nullable_strings(predictions["customer_id"]),
            [None if pd.isna(v) else v.to_pydatetime() for v in predictions["event_time"].tolist()],
            predictions["amount"].astype(float).tolist(),
            _nullable_strings(predictions["merchant_category"]),
        ]
    rows = list(zip(*values, strict=True))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            lock = zlib.crc32(f"batchinfer:predictions:{dt_}".encode())
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
        conn.execute(sa.delete(table).where(table.c.dt == dt_))
        if engine.url.get_driver_name() == "psycopg":
            with conn.connection.driver_connection.cursor() as cursor:
                with cursor.copy(f"COPY predictions ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        else:
            records = [dict(zip(columns, row, strict=True)) for row in rows]
            for start in range(0, len(records), _INSERT_CHUNK):
                conn.execute(sa.insert(table), records[start : start + _INSERT_CHUNK])
    return len(rows)


# ---------------------------------------------------------------------------------------------------
# The previous bulk path for SQLite (git: batchinfer_assets/resources/prediction_db.py at 20f2808): every day in
# one table (primary key (dt, transaction_id), indexes on transaction_id and (dt, score)), loaded by sqlite3's
# executemany over column lists built by numpy/pyarrow, after the same checks and sort (`_prepare`).
# ---------------------------------------------------------------------------------------------------
_LOW_CARDINALITY = ("model_name", "model_version", "merchant_category")


def single_table_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-262144", "journal_size_limit=67108864"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    predictions_table.to_metadata(sa.MetaData()).create(engine)
    return engine


def single_table_replace_partition(engine: sa.Engine, dt_: str, rows: pa.Table) -> int:
    from itertools import repeat

    from batchinfer_assets.resources.prediction_db import _prepare

    table = _prepare(dt_, rows, _layout(CARD))
    with engine.begin() as conn:
        conn.execute(sa.delete(predictions_table).where(predictions_table.c.dt == dt_))
        values = [repeat(dt_, table.num_rows)]
        for name in NEW_COLUMNS[1:]:
            if name == "scoring_run_id":
                values.append(repeat(None, table.num_rows))
                continue
            column = table.column(name)
            if name == "event_time":
                column = pc.binary_join_element_wise(
                    pc.cast(pc.cast(column, pa.timestamp("us")), pa.string()), "+00:00", ""
                )
            if name in _LOW_CARDINALITY:
                encoded = pc.dictionary_encode(column).combine_chunks()
                distinct = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)
                values.append(distinct[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy()].tolist())
            else:
                values.append(column.to_numpy(zero_copy_only=False).tolist())
        cursor = conn.connection.driver_connection.cursor()
        cursor.executemany(
            f"INSERT INTO predictions ({', '.join(NEW_COLUMNS)}) VALUES ({', '.join('?' * len(NEW_COLUMNS))})",
            zip(*values),
        )
        cursor.close()
    return table.num_rows


# ---------------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class Postgres:
    """A throwaway server from the tests' helper, or the server --postgres-url names (databases created in it)."""

    def __init__(self, url: str | None) -> None:
        self.server = None
        if url is None:
            from batchinfer_assets_tests.postgres.server import start_server

            self.server = start_server()
            url = self.server.url("postgres")
        self.admin_url = sa.make_url(url).set(drivername="postgresql+psycopg")

    def new_database(self, prefix: str) -> sa.URL:
        name = f"{prefix}_{os.getpid()}_{time.monotonic_ns() % 10**9}"
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return self.admin_url.set(database=name)

    def drop_database(self, url: sa.URL) -> None:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        engine.dispose()

    def close(self) -> None:
        if self.server is not None:
            from batchinfer_assets_tests.postgres.server import stop_server

            stop_server(self.server)


def _sqlite_url(workdir: Path, name: str) -> str:
    for leftover in workdir.glob(f"{name}.db*"):
        leftover.unlink()
    return f"sqlite:///{workdir / name}.db"


STEPS = ("empty table", "table holding another day", "same day again (replace)", "a third day, ids already sorted")


def publish_section(args, workdir: Path, backends: set[str], pg: Postgres | None) -> None:
    days = [make_day(FIRST_DAY, args.rows, seed=1), make_day(FIRST_DAY + dt.timedelta(days=1), args.rows, seed=2)]
    # A third day with its ids in order, as the pipeline hands a day over (its snapshot is sorted by id).
    third = make_day(FIRST_DAY + dt.timedelta(days=2), args.rows, seed=3)
    days.append(third.take(pc.sort_indices(third.column("transaction_id"))))
    frames = [d.to_pandas() for d in days]  # the old code's input, converted outside the timings
    plan = [(FIRST_DAY, 0), (FIRST_DAY + dt.timedelta(days=1), 1), (FIRST_DAY + dt.timedelta(days=1), 1),
            (FIRST_DAY + dt.timedelta(days=2), 2)]

    targets: list[tuple[str, Callable[[], str]]] = []
    if "sqlite" in backends:
        targets.append(("sqlite", lambda: _sqlite_url(workdir, "publish")))
    if pg is not None:
        targets += [
            ("postgresql+psycopg", lambda: pg.new_database("publish").render_as_string(hide_password=False)),
            ("postgresql+psycopg2", lambda: pg.new_database("publish").set(drivername="postgresql+psycopg2")
             .render_as_string(hide_password=False)),
        ]
    variants = [("new: Arrow bulk path", "new"), ("previous bulk path: one table, executemany", "single"),
                ("old code, six columns (as it was)", "old6"), ("old code, same ten columns", "old10")]
    if args.skip_old:
        variants = variants[:1]

    print(f"\n### (a) publish {args.rows:,} rows; best of {args.repeats}; wall s (rows/s), process CPU s\n")
    print("| backend | code | " + " | ".join(STEPS) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in STEPS) + " |")
    for backend, new_url in targets:
        for label, variant in variants:
            if variant != "new" and backend == "postgresql+psycopg2":
                continue  # the old code's psycopg2 path is its SQLite path (SQLAlchemy executemany)
            if variant == "single" and backend != "sqlite":
                continue  # PostgreSQL's table and COPY path are unchanged
            best: dict[int, tuple[float, float]] = {}
            for _ in range(args.repeats):
                url = new_url()
                if variant == "new":
                    db = PredictionDatabaseResource(url=url)
                    db.ensure_schema(domain=CARD)  # create the schema outside the timings
                    run = lambda day, i: db.replace_partition(day.isoformat(), days[i], domain=CARD)  # noqa: E731
                    engine = db.engine
                elif variant == "single":
                    engine = single_table_engine(url)
                    run = lambda day, i, e=engine: single_table_replace_partition(e, day.isoformat(), days[i])  # noqa: E731
                else:
                    engine = sa.create_engine(url)
                    if variant == "old6":
                        table = old_predictions_table
                        old_metadata.create_all(engine)
                    else:
                        table = predictions_table
                        if backend == "sqlite":  # the single ten-column table (SQLite now keeps a table per day)
                            predictions_table.to_metadata(sa.MetaData()).create(engine)
                        else:
                            current = PredictionDatabaseResource(url=url)
                            current.ensure_schema(domain=CARD)  # the current schema
                            current.engine.dispose()
                    run = lambda day, i, t=table, e=engine: old_replace_partition(  # noqa: E731
                        e, t, day.isoformat(), frames[i] if t is predictions_table else frames[i][list(OLD_COLUMNS[1:])]
                    )
                for step, (day, i) in enumerate(plan):
                    timing = _timed(lambda d=day, k=i: run(d, k))
                    best[step] = min(best.get(step, (float("inf"),) * 2), timing)
                engine.dispose()
                if backend.startswith("postgresql") and pg is not None:
                    pg.drop_database(sa.make_url(url))
            cells = [f"{w:.2f} ({args.rows / w:,.0f}/s), cpu {c:.2f}" for w, c in (best[s] for s in range(len(STEPS)))]
            print(f"| {backend} | {label} | " + " | ".join(cells) + " |", flush=True)


def floor_section(args, workdir: Path) -> None:
    """SQLite alone: INSERT ... SELECT from a temp table already holding the day, per index set."""
    import sqlite3

    table = _sorted_storage_values(make_day(FIRST_DAY, args.rows, seed=1))
    ddl_table = (
        "CREATE TABLE predictions (dt VARCHAR(10) NOT NULL, transaction_id VARCHAR(128) NOT NULL, score FLOAT NOT NULL,"
        " label SMALLINT NOT NULL, model_name VARCHAR(256), model_version VARCHAR(64) NOT NULL,"
        " customer_id VARCHAR(128), event_time DATETIME, amount FLOAT, merchant_category VARCHAR(64){pk}){wr}"
    )
    cases = [
        ("no primary key, no index", ddl_table.format(pk="", wr=""), []),
        ("primary key (dt, transaction_id), WITHOUT ROWID", ddl_table.format(
            pk=", PRIMARY KEY (dt, transaction_id)", wr=" WITHOUT ROWID"), []),
        ("+ index (transaction_id)", ddl_table.format(pk=", PRIMARY KEY (dt, transaction_id)", wr=" WITHOUT ROWID"),
         ["CREATE INDEX ix_tx ON predictions (transaction_id)"]),
        ("+ index (dt, score): the single table before this layout", ddl_table.format(
            pk=", PRIMARY KEY (dt, transaction_id)", wr=" WITHOUT ROWID"),
         ["CREATE INDEX ix_tx ON predictions (transaction_id)", "CREATE INDEX ix_ds ON predictions (dt, score)"]),
        ("its secondary indexes dropped, then CREATE INDEX both after the insert", ddl_table.format(
            pk=", PRIMARY KEY (dt, transaction_id)", wr=" WITHOUT ROWID"), []),
        ("a table of the day's own: primary key (transaction_id), WITHOUT ROWID, CREATE INDEX (score) after "
         "(DROP TABLE instead of DELETE)", "DAY", []),
    ]
    print(f"\n### (c) SQLite alone, {args.rows:,} rows already sorted by transaction_id, no Python per row\n")
    print("| table | INSERT ... SELECT s | then remove the day s |")
    print("| --- | ---: | ---: |")
    names = [n for n in NEW_COLUMNS if n not in ("dt", "scoring_run_id")]
    for label, ddl, indexes in cases:
        path = Path(_sqlite_url(workdir, "floor").removeprefix("sqlite:///"))
        conn = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-262144", "temp_store=MEMORY"):
            conn.execute(f"PRAGMA {pragma}")
        day_table = ddl == "DAY"
        if day_table:
            from batchinfer_assets.resources.prediction_db import _sqlite_day_ddl

            conn.execute(_sqlite_day_ddl("predictions", _layout(CARD)))
        else:
            conn.execute(ddl)
        for statement in indexes:
            conn.execute(statement)
        conn.execute(f"CREATE TEMP TABLE staging ({', '.join(names)})")
        values = [table.column(n).to_numpy(zero_copy_only=False).tolist() for n in names]
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO staging VALUES ({', '.join('?' * len(names))})", zip(*values))
        conn.execute("COMMIT")
        rebuild = "" if indexes or not label.startswith("its secondary") else (
            "CREATE INDEX ix_tx ON predictions (transaction_id); CREATE INDEX ix_ds ON predictions (dt, score);"
        )
        if day_table:
            insert = _timed(lambda c=conn: c.executescript(
                "BEGIN; INSERT INTO predictions SELECT *, NULL FROM staging;"
                " CREATE INDEX predictions_score ON predictions (score); COMMIT;"))
            delete = _timed(lambda c=conn: c.executescript("BEGIN; DROP TABLE predictions; COMMIT;"))
        else:
            insert = _timed(lambda c=conn: c.executescript(
                f"BEGIN; INSERT INTO predictions SELECT '{FIRST_DAY}', * FROM staging; {rebuild} COMMIT;"))
            delete = _timed(lambda c=conn: c.executescript(
                f"BEGIN; DELETE FROM predictions WHERE dt = '{FIRST_DAY}'; COMMIT;"))
        conn.close()
        print(f"| {label} | {insert[0]:.2f} | {delete[0]:.2f} |", flush=True)
        path.unlink()


def _sorted_storage_values(day: pa.Table) -> pa.Table:
    """The day sorted by transaction_id, with the values SQLite stores (event_time as UTC text, score as double)."""
    table = day.take(pc.sort_indices(day.column("transaction_id")))
    et = pc.binary_join_element_wise(
        pc.cast(pc.cast(table.column("event_time"), pa.timestamp("us")), pa.string()), "+00:00", ""
    )
    table = table.set_column(table.schema.get_field_index("event_time"), "event_time", et)
    return table.set_column(1, "score", table.column("score").cast(pa.float64()))


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3


def lookup_section(args, workdir: Path, backends: set[str], pg: Postgres | None) -> None:
    targets: list[tuple[str, Callable[[], str]]] = []
    if "sqlite" in backends:
        targets.append(("sqlite", lambda: _sqlite_url(workdir, "lookup")))
    if pg is not None:
        targets.append(("postgresql", lambda: pg.new_database("lookup").render_as_string(hide_password=False)))
    rng = np.random.default_rng(42)
    day_offsets = rng.integers(0, args.days, args.lookups)
    numbers = rng.integers(0, args.rows, args.lookups)
    probe_ids = [f"{FIRST_DAY + dt.timedelta(days=int(d)):%Y%m%d}-{int(n):07d}" for d, n in zip(day_offsets, numbers)]
    top_days = [(FIRST_DAY + dt.timedelta(days=int(d))).isoformat() for d in rng.integers(0, args.days, args.lookups)]
    point_sql = "SELECT * FROM predictions WHERE transaction_id = {p}"
    top_sql = "SELECT * FROM predictions WHERE dt = {p} ORDER BY score DESC LIMIT 100"

    print(f"\n### (b) lookups on {args.days} days x {args.rows:,} rows; {args.lookups:,} queries each\n")
    print("| backend | build: s per day (last day) | size on disk GiB | point lookup p50 / p99 ms | top 100 of a day p50 / p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for backend, new_url in targets:
        url = new_url()
        db = PredictionDatabaseResource(url=url)
        build_start = time.perf_counter()
        last = 0.0
        for offset in range(args.days):
            day = FIRST_DAY + dt.timedelta(days=offset)
            rows = make_day(day, args.rows, seed=100 + offset)
            last = _timed(lambda d=day, r=rows: db.replace_partition(d.isoformat(), r, domain=CARD))[0]
            print(f"  {backend}: day {offset + 1}/{args.days} published in {last:.1f} s", file=sys.stderr, flush=True)
        build = time.perf_counter() - build_start
        db.engine.dispose()

        if backend == "sqlite":
            import sqlite3

            path = url.removeprefix("sqlite:///")
            conn = sqlite3.connect(path)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            size = Path(path).stat().st_size
            run = lambda sql, p, c=conn: c.execute(sql.format(p="?"), (p,)).fetchall()  # noqa: E731
        else:
            import psycopg

            conn = psycopg.connect(sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                                   autocommit=True)
            conn.execute("ANALYZE predictions")
            size = conn.execute("SELECT pg_total_relation_size('predictions')").fetchone()[0]
            run = lambda sql, p, c=conn: c.execute(sql.format(p="%s"), (p,)).fetchall()  # noqa: E731
        results = []
        for sql, params, expect in ((point_sql, probe_ids, 1), (top_sql, top_days, 100)):
            for p in params[:200]:  # warm-up: prepared statements, the upper index levels
                run(sql, p)
            samples = []
            for p in params:
                start = time.perf_counter()
                got = run(sql, p)
                samples.append(time.perf_counter() - start)
                assert len(got) == min(expect, args.rows), (sql, p, len(got))
            results.append(_percentiles(samples))
        conn.close()
        (p50a, p99a), (p50b, p99b) = results
        print(f"| {backend} | {build / args.days:.1f} ({last:.1f}) | {size / 2**30:.1f} | {p50a:.3f} / {p99a:.3f} "
              f"| {p50b:.3f} / {p99b:.3f} |", flush=True)
        if backend == "postgresql" and pg is not None:
            pg.drop_database(sa.make_url(url))
        else:
            for leftover in Path(workdir).glob("lookup.db*"):
                leftover.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per day")
    parser.add_argument("--repeats", type=int, default=1, help="publish runs per variant; the best is shown")
    parser.add_argument("--days", type=int, default=30, help="days in the lookup table")
    parser.add_argument("--lookups", type=int, default=10_000, help="queries of each kind")
    parser.add_argument("--sections", default="publish,floor", help="comma-separated: publish, floor, lookup")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--skip-old", action="store_true", help="publish with the new code only")
    parser.add_argument("--postgres-url", help="an existing server (a database is created per run and dropped)")
    parser.add_argument("--workdir", help="where SQLite files go [a temporary directory]")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    backends = set(args.backends.split(","))

    pg = Postgres(args.postgres_url) if "postgresql" in backends and sections & {"publish", "lookup"} else None
    try:
        with tempfile.TemporaryDirectory(prefix="publishing-bench-", dir=args.workdir) as tmp:
            workdir = Path(tmp)
            print(f"python {' '.join(sys.argv)}\n{os.cpu_count()} CPUs; sqlite {__import__('sqlite3').sqlite_version};"
                  f" pyarrow {pa.__version__}; SQLAlchemy {sa.__version__}")
            if "publish" in sections:
                publish_section(args, workdir, backends, pg)
            if "floor" in sections and "sqlite" in backends:
                floor_section(args, workdir)
            if "lookup" in sections:
                lookup_section(args, workdir, backends, pg)
    finally:
        if pg is not None:
            pg.close()


if __name__ == "__main__":
    main()
