"""The built-in churn domain as an operator runs it: webserver and daemon select it with BATCHINFER_DOMAIN alone."""

import sqlite3

from batchinfer_assets_tests.system.dagster_processes import REPO, backfill_scoring_then_wait_for_publishing, running_dagster

DAYS = ["2025-03-02", "2025-03-03"]


def test_the_churn_domain_backfilled_through_graphql_is_published_by_the_daemon_with_its_own_columns(tmp_path):
    # No model registered: the daemon-launched run trains and registers the churn demo model (churn-predictor).
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = {"BATCHINFER_DOMAIN": "batchinfer_assets.domains.customer_churn:domain", "BATCHINFER_DEMO_ROWS_PER_DAY": "400"}
    with running_dagster(tmp_path, tracking_uri, REPO / "dagster.yaml", extra_env=extra) as system:
        backfill_scoring_then_wait_for_publishing(system, DAYS)

    with sqlite3.connect(tmp_path / "home" / "predictions.db") as conn:
        columns = [row[1] for row in conn.execute("pragma table_info(predictions)")]
        counts = dict(conn.execute("select dt, count(*) from predictions group by dt").fetchall())
        versions = {row[0] for row in conn.execute("select distinct s.pinned_model_uri from predictions p join scoring_runs s on s.id = p.scoring_run_id")}
    assert columns[:2] == ["dt", "customer_day_id"] and {"customer_id", "plan", "monthly_fee"} <= set(columns)
    assert counts == dict.fromkeys(DAYS, 400)
    assert versions == {"models:/churn-predictor/1"}
