"""The Kubernetes code location: the same definitions, each step a pod, the pipeline step on a GPU node.

With `BATCHINFER_SCORING_ENGINE=ray` (the Helm values' choice) the pipeline step is a CPU pod that drives the
RayCluster of `deploy/kuberay/raycluster.yaml` (`RAY_ADDRESS`), whose GPU workers score.

The Helm values point the user-code deployment at this module (`-m batchinfer_assets.k8s_definitions`);
`dagster dev` and the plain image keep loading `batchinfer_assets.definitions`. The choice of executor is
deployment configuration, not an environment check inside the package.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_k8s import k8s_job_executor

from batchinfer_assets.project import build_definitions
from batchinfer_assets.settings import Settings

SCORING_STEP = "daily_pipeline"
"""The op name of the pipeline step, which scores: `per_step_k8s_config` is keyed by op name.

Every stage of a day runs in that one step, so the whole step gets the GPU pod; a run that only publishes
(the sensor's) asks for one too, for the seconds it runs. Kubernetes config cannot depend on the selection."""

GPU_RESOURCE = "nvidia.com/gpu"

CPU_STEP_K8S_CONFIG: dict[str, Any] = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"memory": "4Gi"},
        }
    }
}
"""Every step pod: one core and a few GiB hold a day of features or drift statistics."""


def gpu_step_k8s_config(gpus: int = 1) -> dict[str, Any]:
    """The `dagster-k8s/config` shape for a step that needs `gpus` NVIDIA GPUs on a tainted GPU node."""
    if gpus < 1:
        raise ValueError(f"a GPU scoring step needs at least one GPU, got {gpus}")
    return {
        "container_config": {
            "resources": {
                "requests": {"cpu": "2", "memory": "8Gi"},
                # Extended resources are requested through limits; Kubernetes copies them to requests.
                "limits": {GPU_RESOURCE: gpus, "memory": "16Gi"},
            },
            "env": [{"name": "BATCHINFER_DEVICE", "value": "cuda"}],
        },
        "pod_spec_config": {
            # GPU node pools are usually tainted so that only pods asking for a GPU land there.
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def k8s_executor(gpus_per_scoring_step: int = 1) -> dg.ExecutorDefinition:
    """`k8s_job_executor` with CPU defaults for every step and `gpus_per_scoring_step` GPUs (0: none) for the scoring step."""
    per_step: Mapping[str, Any] = {SCORING_STEP: gpu_step_k8s_config(gpus_per_scoring_step)} if gpus_per_scoring_step else {}
    return k8s_job_executor.configured(
        {"step_k8s_config": CPU_STEP_K8S_CONFIG, "per_step_k8s_config": dict(per_step)},
        name="k8s_gpu_scoring_executor",
    )


def build_k8s_definitions(
    settings: Settings, gpus_per_scoring_step: int = 1, days_per_run: int = 1
) -> dg.Definitions:
    """The project's definitions with the k8s executor, and asset backfills fanned out as one run per `days_per_run`.

    With the Ray engine the scoring step is only the cluster's driver (the GPUs are the RayCluster's workers), so it
    runs on a CPU pod like every other step.
    """
    if days_per_run < 1:
        raise ValueError(f"days_per_run must be at least 1, got {days_per_run}")
    if settings.scoring_engine == "ray":
        gpus_per_scoring_step = 0
    base = build_definitions(settings)
    fanned_out = [
        asset.with_attributes(backfill_policy=dg.BackfillPolicy.multi_run(days_per_run))
        if isinstance(asset, dg.AssetsDefinition) and asset.partitions_def is not None
        else asset
        for asset in base.assets or []
    ]
    return dg.Definitions(
        assets=fanned_out,
        asset_checks=base.asset_checks,
        jobs=base.jobs,
        schedules=base.schedules,
        sensors=base.sensors,
        resources=base.resources,
        loggers=base.loggers,
        metadata=base.metadata,
        executor=k8s_executor(gpus_per_scoring_step),
    )


defs = build_k8s_definitions(Settings.from_env())
