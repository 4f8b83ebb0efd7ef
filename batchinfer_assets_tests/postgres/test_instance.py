"""A day materialized on a Dagster instance stored in PostgreSQL and published to a PostgreSQL prediction database."""

import dataclasses
import shutil
from pathlib import Path

import dagster as dg
import pytest

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore

REPO = Path(__file__).resolve().parents[2]
DAY = "2025-03-04"
PUBLISHED = dg.AssetKey("published_predictions")


@pytest.fixture
def postgres_instance(tmp_path, postgres_server, monkeypatch):
    """The shipped dagster.postgres.yaml as DAGSTER_HOME/dagster.yaml, its variables pointing at a fresh database."""
    database = postgres_server.create_database("dagster")
    for name, value in postgres_server.dagster_env(database).items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.postgres.yaml", home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance, database
    finally:
        instance.dispose()


def _materialize(settings, instance, selection: dg.AssetSelection):
    defs = build_definitions(settings)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition | dg.SourceAsset)]
    result = dg.materialize(
        assets, resources=build_resources(settings), partition_key=DAY, instance=instance, selection=selection
    )
    assert result.success
    return result


def _published_rows(server, database) -> tuple[int, int, int, set[str]]:
    """Rows of the day, distinct primary keys of the day, duplicated keys anywhere, model versions."""
    with server.connect(database) as conn:
        rows, keys = conn.execute(
            "select count(*), count(distinct (dt, transaction_id)) from predictions where dt = %s", (DAY,)
        ).fetchone()
        duplicated = conn.execute(
            "select count(*) from (select 1 from predictions group by dt, transaction_id having count(*) > 1) d"
        ).fetchone()[0]
        versions = {v for (v,) in conn.execute("select distinct model_version from predictions")}
    return rows, keys, duplicated, versions


def test_day_on_postgres_instance_published_to_postgres_and_republished_without_duplicates(
    pipeline_settings, postgres_server, postgres_instance
):
    instance, dagster_database = postgres_instance
    predictions_database = postgres_server.create_database("predictions")
    settings = dataclasses.replace(pipeline_settings, predictions_db_url=postgres_server.url(predictions_database))

    first = _materialize(settings, instance, dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model"))
    scored = PartitionedParquetStore(settings.storage_uri).read_partition("predictions", DAY).num_rows
    assert scored > 0
    assert _published_rows(postgres_server, predictions_database) == (scored, scored, 0, {"1"})

    second = _materialize(settings, instance, dg.AssetSelection.assets(PUBLISHED))
    assert _published_rows(postgres_server, predictions_database) == (scored, scored, 0, {"1"})
    with postgres_server.connect(predictions_database) as conn:
        primary_key = conn.execute(
            "select string_agg(k.column_name, ',' order by k.ordinal_position) from information_schema.table_constraints c"
            " join information_schema.key_column_usage k using (constraint_name, table_name)"
            " where c.table_name = 'predictions' and c.constraint_type = 'PRIMARY KEY'"
        ).fetchone()[0]
    assert primary_key == "dt,transaction_id"

    # Both runs and their events live in the instance's PostgreSQL database, not in a SQLite file.
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert not list((Path(instance.root_directory)).rglob("*.db"))
    with postgres_server.connect(dagster_database) as conn:
        stored_runs = {r for (r,) in conn.execute("select run_id from runs where status = 'SUCCESS'")}
        published_events = conn.execute(
            "select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'"
            " and asset_key = %s and partition = %s",
            (PUBLISHED.to_string(), DAY),
        ).fetchone()[0]
    assert stored_runs == {first.run_id, second.run_id}
    assert published_events == 2
    latest = instance.get_latest_materialization_event(PUBLISHED)
    assert latest is not None and latest.run_id == second.run_id
    assert latest.asset_materialization.metadata["row_count"].value == scored
    assert "postgresql+psycopg://" in latest.asset_materialization.metadata["database"].value
    assert postgres_server.password not in latest.asset_materialization.metadata["database"].value
