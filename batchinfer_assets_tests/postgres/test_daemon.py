"""The whole system on PostgreSQL: webserver, daemon and the runs it launches share a PostgreSQL instance.

Daemon-launched runs are separate processes, so this proves the shipped dagster.postgres.yaml and the
PostgreSQL prediction database work from every process, not only in-process. Two days keep it short; the
SQLite variant in system/ covers the UI screenshot.
"""

from batchinfer_assets_tests.system.dagster_processes import REPO, backfill_scoring_then_wait_for_publishing, running_dagster

DAYS = ["2025-05-12", "2025-05-13"]


def test_backfill_and_sensor_publishing_on_a_postgres_instance(tmp_path, demo_model_store, postgres_server):
    dagster_database = postgres_server.create_database("dagster")
    predictions_database = postgres_server.create_database("predictions")
    env = {
        **postgres_server.dagster_env(dagster_database),
        "BATCHINFER_PREDICTIONS_DB_URL": postgres_server.url(predictions_database),
    }
    with running_dagster(tmp_path, demo_model_store.tracking_uri, REPO / "dagster.postgres.yaml", env) as system:
        backfill_scoring_then_wait_for_publishing(system, DAYS)

        def backfill_runs_finished():
            with postgres_server.connect(dagster_database) as conn:
                statuses = sorted(
                    s
                    for (s,) in conn.execute(
                        "select r.status from runs r join run_tags t on t.run_id = r.run_id"
                        " where t.key = 'dagster/backfill'"
                    )
                )
            return statuses if len(statuses) >= 2 and not {"QUEUED", "STARTING", "STARTED"} & set(statuses) else None

        # The publishing run's materialization lands before the run itself reports success.
        run_statuses = system.wait_for("the backfill runs to finish", backfill_runs_finished, 120)

    # The scoring backfill's run and the publishing backfill's run the sensor requested, both launched by the
    # daemon and recorded in PostgreSQL.
    assert run_statuses == ["SUCCESS", "SUCCESS"]
    with postgres_server.connect(predictions_database) as conn:
        per_day = dict(conn.execute("select dt, count(*) from predictions group by dt order by dt").fetchall())
        duplicated = conn.execute(
            "select count(*) from (select 1 from predictions group by dt, transaction_id having count(*) > 1) d"
        ).fetchone()[0]
    assert sorted(per_day) == DAYS and all(n > 0 for n in per_day.values()), per_day
    assert duplicated == 0
    with postgres_server.connect(dagster_database) as conn:
        daemon_heartbeats = conn.execute("select count(*) from daemon_heartbeats").fetchone()[0]
    assert daemon_heartbeats > 0
    assert not list((tmp_path / "dagster_home").rglob("*.db")), "no SQLite storage next to the PostgreSQL instance"
