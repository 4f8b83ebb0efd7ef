"""deploy/kuberay: the RayCluster matches KubeRay's CRD schema, and the Helm values point the scoring step at it."""

import copy
import json
from pathlib import Path

import dagster as dg
import jsonschema
import pytest
import yaml

from batchinfer_assets.k8s_definitions import SCORING_STEP, build_k8s_definitions
from batchinfer_assets.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GPU = "nvidia.com/gpu"


def raycluster() -> dict:
    return yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())


def crd_errors(document: dict) -> list[str]:
    """Where the document breaks the vendored schema of the RayCluster v1 CRD (what the API server would refuse)."""
    schema = json.loads((DEPLOY / "kuberay" / "raycluster.v1.schema.json").read_text())
    return [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(document)]


def test_the_raycluster_matches_the_kuberay_crd_schema():
    cluster = raycluster()
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert crd_errors(cluster) == []


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda c: c["spec"].pop("headGroupSpec"), "'headGroupSpec' is a required property"),
        (lambda c: c["spec"]["workerGroupSpecs"][0].update(maxReplicas="eight"), "'eight' is not of type 'integer'"),
        (lambda c: c["spec"]["authOptions"].update(mode="password"), "'password' is not one of ['disabled', 'token']"),
    ],
)
def test_the_schema_check_refuses_a_broken_raycluster(break_it, message):
    cluster = copy.deepcopy(raycluster())
    break_it(cluster)
    assert any(message in error for error in crd_errors(cluster))


def test_the_gpu_workers_autoscale_within_bounds_on_the_projects_image():
    spec = raycluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (gpu,) = spec["workerGroupSpecs"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] >= 2
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"][GPU] == 1
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["image"] == worker["image"] == image
    # Ray's version on the nodes is the ray extra's: the step (a driver) and the cluster must agree.
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    assert f'"ray[data]>={spec["rayVersion"].rsplit(".", 1)[0]}' in pyproject


def test_the_helm_values_send_scoring_to_the_raycluster_with_its_token_from_a_secret():
    cluster = raycluster()
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e for e in deployment["env"]}
    assert env["BATCHINFER_SCORING_ENGINE"]["value"] == "ray"
    # KubeRay names the head's Service <cluster>-head-svc; 6379 is the GCS the driver joins.
    assert env["RAY_ADDRESS"]["value"] == f"{cluster['metadata']['name']}-head-svc:6379"
    token = env["RAY_AUTH_TOKEN"]
    assert "value" not in token
    secret = cluster["spec"]["authOptions"]["secretName"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}
    secrets = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "secrets.example.yaml").read_text())}
    assert "auth_token" in secrets[secret]["stringData"]
    settings = Settings.from_env({k: e["value"] for k, e in env.items() if "value" in e})
    assert (settings.scoring_engine, settings.ray_address) == ("ray", "batchinfer-ray-head-svc:6379")


def test_with_the_ray_engine_the_scoring_step_is_a_cpu_pod(tmp_path):
    settings = Settings.from_env({"BATCHINFER_HOME": str(tmp_path), "BATCHINFER_SCORING_ENGINE": "ray", "RAY_ADDRESS": "head:6379"})
    job = build_k8s_definitions(settings).resolve_job_def("daily_scoring_job")
    (executor_config,) = dg.validate_run_config(job, {})["execution"].values()
    assert SCORING_STEP not in executor_config["per_step_k8s_config"]
    assert GPU not in json.dumps(executor_config)
