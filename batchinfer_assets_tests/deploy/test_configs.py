"""Every config in deploy/ loads: the production dagster.yaml, the Helm values, the Secrets, the k8s executor."""

import importlib
from collections import defaultdict
import json
import shutil
from pathlib import Path

import dagster as dg
import jsonschema
import pytest
import referencing
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from dagster_postgres.storage import DagsterPostgresStorage

from batchinfer_assets.k8s_definitions import GPU_RESOURCE, SCORING_STEP, build_k8s_definitions
from batchinfer_assets.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def test_production_instance_config_loads_and_each_class_accepts_its_config(tmp_path):
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_instance_class = dagster_instance_config(str(tmp_path))
    assert custom_instance_class is None
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert validate_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"]).success
    for key in ("run_launcher", "run_coordinator", "compute_logs"):
        entry = config[key]
        klass = getattr(importlib.import_module(entry["module"]), entry["class"])
        result = validate_config(klass.config_type(), entry.get("config") or {})
        assert result.success, f"{key}: {[e.message for e in result.errors]}"
    per_backfill, all_backfills = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert per_backfill == {"key": "dagster/backfill", "value": {"applyLimitPerUniqueValue": True}, "limit": 4}
    assert all_backfills["limit"] < config["concurrency"]["runs"]["max_concurrent_runs"]


def any_pointer() -> defaultdict:
    """A document in which every JSON pointer leads to the empty (accept-anything) schema."""
    return defaultdict(any_pointer)


def helm_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((DEPLOY / "helm" / "values.schema.json").read_text())
    # The chart points Kubernetes object shapes at kubernetesjsonschema.dev, which CI cannot reach:
    # those leaves (resources, probes, env entries) are accepted as any object here.
    registry = referencing.Registry(
        retrieve=lambda uri: referencing.Resource(contents=any_pointer(), specification=referencing.jsonschema.DRAFT7)
    )
    return jsonschema.Draft7Validator(schema, registry=registry)


def filled_by_chart_defaults(error: jsonschema.ValidationError) -> bool:
    """A missing key the chart's own values.yaml supplies: Helm deep-merges maps, but replaces lists."""
    if error.validator == "required":
        return not any(isinstance(step, int) for step in error.absolute_path)
    if error.validator in ("anyOf", "oneOf"):
        branches: dict[object, list] = {}
        for sub in error.context or []:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        return any(all(filled_by_chart_defaults(e) for e in errs) for errs in branches.values())
    return False


def test_helm_values_match_the_chart_schema():
    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    validator = helm_validator()
    assert set(values) <= set(validator.schema["properties"]), "a top-level key the chart does not know"
    errors = [e for e in validator.iter_errors(values) if not filled_by_chart_defaults(e)]
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_helm_schema_check_rejects_a_broken_deployment():
    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    del values["dagster-user-deployments"]["deployments"][0]["port"]
    values["runLauncher"]["config"]["k8sRunLauncher"]["imagePullPolicy"] = "Sometimes"
    messages = [e.message for e in helm_validator().iter_errors(values) if not filled_by_chart_defaults(e)]
    assert any("'port' is a required property" in m for m in messages)
    assert any("'Sometimes'" in m for m in messages) or any("is not valid under any" in m for m in messages)


def test_helm_values_and_production_yaml_agree():
    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    production = load_yaml(DEPLOY / "dagster.yaml")
    extra = values["additionalInstanceConfig"]
    assert extra["concurrency"] == production["concurrency"]
    assert extra["freshness"] == production["freshness"]
    # With a `concurrency` block Dagster refuses run limits under run_coordinator.
    assert values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] == {}
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert [s["name"] for s in launcher["envSecrets"]] == production["run_launcher"]["config"]["env_secrets"]
    daemon = values["dagsterDaemon"]
    assert daemon["runMonitoring"]["startTimeoutSeconds"] == production["run_monitoring"]["start_timeout_seconds"]
    assert daemon["runRetries"]["maxRetries"] == production["run_retries"]["max_retries"]


def test_every_referenced_secret_is_in_the_example_manifest():
    secrets = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "secrets.example.yaml").read_text())}
    assert all(doc["apiVersion"] == "v1" and doc["kind"] == "Secret" for doc in secrets.values())
    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert {s["name"] for s in deployment["envSecrets"]} <= set(secrets)
    assert "postgresql-password" in secrets[values["global"]["postgresqlSecretName"]]["stringData"]
    production = load_yaml(DEPLOY / "dagster.yaml")
    secret_keys = {key for doc in secrets.values() for key in doc["stringData"]}
    env_refs = {field["env"] for field in production["storage"]["postgres"]["postgres_db"].values() if isinstance(field, dict)}
    env_refs.add(production["compute_logs"]["config"]["bucket"]["env"])
    assert env_refs <= secret_keys
    assert {"MLFLOW_TRACKING_URI", "BATCHINFER_PREDICTIONS_DB_URL", "AWS_ACCESS_KEY_ID"} <= secret_keys


@pytest.fixture(scope="module")
def k8s_defs(tmp_path_factory) -> dg.Definitions:
    home = tmp_path_factory.mktemp("k8s_home")
    return build_k8s_definitions(Settings.from_env({"BATCHINFER_HOME": str(home)}))


def step_job(step_config: dict) -> object:
    """The Kubernetes Job dagster-k8s builds for a step with the given user-defined config."""
    job_config = DagsterK8sJobConfig(
        job_image="registry.example.com/batchinfer-assets:0.1.0-cu128",
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
    )
    return construct_dagster_k8s_job(
        job_config,
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-test",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(step_config),
    )


def test_k8s_job_puts_the_scoring_step_on_a_gpu(k8s_defs):
    job = k8s_defs.resolve_job_def("daily_scoring_job")
    assert SCORING_STEP in {node.name for node in job.graph.nodes}
    assert job.executor_def.name == "k8s_gpu_scoring_executor"
    (executor_config,) = dg.validate_run_config(job, {})["execution"].values()
    per_step = executor_config["per_step_k8s_config"]
    assert set(per_step) == {SCORING_STEP}

    scoring_pod = step_job(per_step[SCORING_STEP]).spec.template.spec
    (container,) = scoring_pod.containers
    assert container.resources.limits[GPU_RESOURCE] == "1"
    assert {"name": "BATCHINFER_DEVICE", "value": "cuda"} in [{"name": e.name, "value": e.value} for e in container.env]
    assert [t.key for t in scoring_pod.tolerations] == [GPU_RESOURCE]

    (cpu_container,) = step_job(executor_config["step_k8s_config"]).spec.template.spec.containers
    assert GPU_RESOURCE not in (cpu_container.resources.limits or {})
    assert cpu_container.resources.requests["cpu"] == "1"


def test_k8s_definitions_fan_backfills_out_one_day_per_run(k8s_defs):
    for key in ("raw_transactions", "input_snapshot", "predictions", "published_predictions"):
        assert k8s_defs.resolve_assets_def(key).backfill_policy == dg.BackfillPolicy.multi_run(1)
    assert k8s_defs.resolve_schedule_def("daily_scoring_schedule").job_name == "daily_scoring_job"
