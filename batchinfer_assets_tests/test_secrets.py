"""No credential is ever shown: a run, its event log, its metadata, the model sensor's tick and the resources' config
seen through GraphQL, all driven with credential-bearing settings, are searched for the secrets."""

import dataclasses
import logging
import socket
import traceback
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.observe import observe

from batchinfer_assets.assets.predictions import scoring_model
from batchinfer_assets.definitions import build_definitions
from batchinfer_assets.partitions import PIPELINE_GROUP
from batchinfer_assets.sensors import model_version_sensor
from batchinfer_assets.settings import Settings
from batchinfer_assets.tables import SCORING_MODEL
from batchinfer_assets_tests.support import materializations

DAY = "2025-01-02"
TRACKING_SECRET = "S3cretTrack"
DB_SECRET = "S3cretDb"
RAY_SECRET = "S3cretRay"
SECRETS = (TRACKING_SECRET, DB_SECRET, RAY_SECRET)
DAILY_ASSETS = dg.AssetSelection.groups(PIPELINE_GROUP) - dg.AssetSelection.assets(SCORING_MODEL)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again: nothing listens there


def _event_texts(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Every event of the run as the instance stores it: messages, metadata, errors with their causes."""
    return [dg.serialize_value(record) for record in instance.all_logs(run_id)]


def _instance(folder: Path):
    folder.mkdir()
    return dg.instance_for_test(temp_dir=str(folder))


def _stored_bytes(folder: Path) -> bytes:
    """Everything the instance wrote under its folder: event and run storage, captured stdout and stderr."""
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def _assert_no_secret(where: str, text: str | bytes) -> None:
    for secret in SECRETS:
        found = secret.encode() in text if isinstance(text, bytes) else secret in text
        assert not found, f"{secret} shown in {where}"


@pytest.fixture
def leaky_settings(monkeypatch, tmp_path):
    """Credential-bearing settings, set as an operator sets them: in the environment."""
    port = _closed_port()
    env = {
        "BATCHINFER_HOME": str(tmp_path / "home"),
        "BATCHINFER_DEMO_ROWS_PER_DAY": "200",
        "MLFLOW_TRACKING_URI": f"http://scorer:{TRACKING_SECRET}@127.0.0.1:{port}",
        # Not the default model: nothing is trained when the registry does not answer.
        "BATCHINFER_MODEL_URI": "models:/fraud-detector/1",
        # SQLite ignores the unknown query parameter; the URL still reaches every message that names the database.
        "BATCHINFER_PREDICTIONS_DB_URL": f"sqlite:///{tmp_path / 'predictions.db'}?password={DB_SECRET}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env(), port


def test_a_failed_run_its_events_and_the_model_sensor_tick_show_no_credential(leaky_settings, tmp_path, caplog):
    settings, port = leaky_settings
    caplog.set_level(logging.INFO)  # MLflow, urllib3 and the rest log through Python's logging, outside Dagster's events
    defs = build_definitions(settings)
    with _instance(tmp_path / "dagster") as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            partition_key=DAY,
            asset_selection=list(DAILY_ASSETS.resolve(defs.resolve_asset_graph())),
            raise_on_error=False,
        )
        assert not result.success
        failure = instance.get_run_by_id(result.run_id)
        assert failure.status == dg.DagsterRunStatus.FAILURE
        [step_failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        description = step_failure.step_failure_data.user_failure_data.description
        # Still names the registry, only its password masked.
        assert f"MLflow at http://scorer:***@127.0.0.1:{port} (MLFLOW_TRACKING_URI) did not answer" in description
        for text in _event_texts(instance, result.run_id):
            _assert_no_secret("the run's event log", text)

        observed = observe([scoring_model], resources=defs.resources, instance=instance, raise_on_error=False)
        assert not observed.success
        for text in _event_texts(instance, observed.run_id):
            _assert_no_secret("the scoring_model observation's event log", text)

        with pytest.raises(Exception) as tick:
            model_version_sensor(dg.build_sensor_context(instance=instance, resources={"model_registry": defs.resources["model_registry"]}))
        shown = "".join(traceback.format_exception(tick.value))
        assert f"http://scorer:***@127.0.0.1:{port}" in shown
        _assert_no_secret("the model sensor's tick error", shown)

        stored = _stored_bytes(tmp_path / "dagster")
        assert f"scorer:***@127.0.0.1:{port}".encode() in stored, "the events are stored as text, so searching them means something"
        _assert_no_secret("the instance's stored files (events, runs, captured logs)", stored)
    assert "Retrying" in caplog.text, "the MLflow client's retries were logged"
    _assert_no_secret("Python's log records (MLflow, urllib3)", caplog.text)


def test_a_published_day_shows_no_database_password(pipeline_settings, monkeypatch, tmp_path):
    url = f"{pipeline_settings.predictions_db_url}?password={DB_SECRET}"
    monkeypatch.setenv("BATCHINFER_PREDICTIONS_DB_URL", url)
    settings = dataclasses.replace(pipeline_settings, predictions_db_url=url)
    defs = build_definitions(settings)
    with _instance(tmp_path / "dagster") as instance:
        result = dg.materialize(
            list(defs.assets), resources=defs.resources, instance=instance, selection=DAILY_ASSETS, partition_key=DAY
        )
        assert result.success
        database = materializations(result, "published_predictions")[DAY].metadata["database"].value
        assert database == f"{pipeline_settings.predictions_db_url}?password=***"
        for text in _event_texts(instance, result.run_id):
            _assert_no_secret("the publishing run's event log", text)
        _assert_no_secret("the instance's stored files", _stored_bytes(tmp_path / "dagster"))


def test_credential_settings_reach_resources_as_variable_names(leaky_settings, monkeypatch):
    monkeypatch.setenv("BATCHINFER_SCORING_ENGINE", "ray")
    monkeypatch.setenv("RAY_ADDRESS", f"ray://scorer:{RAY_SECRET}@raycluster-head-svc:10001")
    resources = build_definitions(Settings.from_env()).resources

    assert resources["model_registry"].tracking_uri == dg.EnvVar("MLFLOW_TRACKING_URI")
    assert resources["prediction_db"].url == dg.EnvVar("BATCHINFER_PREDICTIONS_DB_URL")
    assert resources["scoring_engine"].cluster.address == dg.EnvVar("RAY_ADDRESS")
    for name, resource in resources.items():
        # What the UI and GraphQL's `configuredValues` show of the resource.
        _assert_no_secret(f"resource {name}'s config", str(resource.get_resource_definition().config_schema.as_field().default_value))


RESOURCES_QUERY = """
query Resources($selector: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $selector) {
    __typename
    ... on ResourceDetailsList { results { name configuredValues { key value type } nestedResources { name type } } }
    ... on PythonError { message }
  }
}
"""


def test_the_ui_shows_credential_settings_as_variable_names(leaky_settings, monkeypatch):
    """GraphQL's `configuredValues` (what the UI's resource pages show) of the code location as `dagster dev` loads it."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    import batchinfer_assets.definitions

    monkeypatch.setenv("BATCHINFER_SCORING_ENGINE", "ray")
    monkeypatch.setenv("RAY_ADDRESS", f"ray://scorer:{RAY_SECRET}@raycluster-head-svc:10001")
    with dg.instance_for_test() as instance, define_out_of_process_context(
        batchinfer_assets.definitions.__file__, "defs", instance
    ) as context:
        [location] = context.code_location_names
        answer = execute_dagster_graphql(
            context, RESOURCES_QUERY, variables={"selector": {"repositoryLocationName": location, "repositoryName": "__repository__"}}
        )
    assert answer.errors is None
    results = answer.data["allTopLevelResourceDetailsOrError"]["results"]
    configured = {(r["name"], v["key"]): (v["type"], v["value"]) for r in results for v in r["configuredValues"]}
    assert configured[("model_registry", "tracking_uri")] == ("ENV_VAR", "MLFLOW_TRACKING_URI")
    assert configured[("prediction_db", "url")] == ("ENV_VAR", "BATCHINFER_PREDICTIONS_DB_URL")
    _assert_no_secret("GraphQL's resource details", str(answer.data))
