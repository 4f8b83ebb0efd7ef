"""How many scoring actors a Ray cluster holds while a read task still finds CPUs, and the errors that say why not; no Ray or Dagster here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

# Ray counts resources in fixed point (1/10,000 of a unit): counting in those units, 3 x 0.1 CPU fits 0.3 CPU.
_UNITS = 10_000
# The engine's settings, as an operator sets them.
SETTINGS = "RayScoringEngine"


class RayPoolDoesNotFitError(ValueError):
    """The scoring pool asks for more than the cluster's nodes have, or leaves no CPU for the read tasks: it would hang, not run."""


class RayNoProgressError(RuntimeError):
    """The Ray job scored no rows for the engine's no-progress timeout and was cancelled."""


@dataclass(frozen=True)
class NodeResources:
    """What one alive node offers Ray (logical CPUs and GPUs, as `ray start --num-cpus/--num-gpus` set them)."""

    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class PoolRequest:
    """What the scoring job asks of the cluster: per actor, and per Parquet read task."""

    cpus_per_actor: float
    gpus_per_actor: float
    cpus_per_read_task: float

    def describe(self, actors: Optional[int] = None) -> str:
        per_actor = f"{self.cpus_per_actor:g} CPU" + (f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else "")
        pool = f"{actors} actor(s) x {per_actor}" if actors is not None else f"{per_actor} per actor"
        return f"{pool}, and {self.cpus_per_read_task:g} CPU per read task"


def nodes_from_ray(ray_nodes: Sequence[Mapping]) -> list[NodeResources]:
    """The alive nodes of `ray.nodes()`, with their total (not currently free) CPUs and GPUs."""
    return [
        NodeResources(cpus=float(n.get("Resources", {}).get("CPU", 0.0)), gpus=float(n.get("Resources", {}).get("GPU", 0.0)))
        for n in ray_nodes
        if n.get("Alive")
    ]


def describe_cluster(nodes: Sequence[NodeResources], available: Optional[Mapping[str, float]] = None) -> str:
    """E.g. `2 node(s), 2 CPU(s) (1 + 1), 0 GPU(s)`, plus what is free now when `available` is given."""
    cpus = sum(n.cpus for n in nodes)
    gpus = sum(n.gpus for n in nodes)
    text = f"{len(nodes)} node(s), {cpus:g} CPU(s) ({' + '.join(f'{n.cpus:g}' for n in nodes) or 'none'}), {gpus:g} GPU(s)"
    if available is not None:
        text += f"; free now: {available.get('CPU', 0.0):g} CPU(s), {available.get('GPU', 0.0):g} GPU(s)"
    return text


def actors_that_fit(nodes: Sequence[NodeResources], request: PoolRequest) -> int:
    """The most actors the nodes hold at once while, wherever Ray places them, some node keeps a read task's CPUs free.

    Ray Data starts the whole pool first and spreads it over the nodes; actors keep their CPUs for the whole job,
    so a read task that finds no node with its CPUs free waits forever (the pool then has nothing to score).
    """
    cpu, gpu, read = (_units(request.cpus_per_actor), _units(request.gpus_per_actor), _units(request.cpus_per_read_task))
    held = 0
    for node in nodes:
        fits = [_units(node.cpus) // cpu] if cpu else []
        if gpu:
            fits.append(_units(node.gpus) // gpu)
        held += min(fits) if fits else 0
    cpu_nodes = [n for n in nodes if n.cpus > 0]
    # Were every node short of a read task's CPUs, the CPUs left over all nodes would be under one read task per node:
    # leaving at least that much free guarantees a node for the read, whatever the placement.
    spare = sum(_units(n.cpus) for n in cpu_nodes) - len(cpu_nodes) * read
    if spare < 0:
        return 0
    return min(held, spare // cpu) if cpu else held


def pool_size(nodes: Sequence[NodeResources], request: PoolRequest, configured: Optional[int], batches: int) -> int:
    """The configured pool size if the cluster holds it, else as many actors as fit and the day has batches for.

    Raises `RayPoolDoesNotFitError` naming the cluster and the setting to change when no such pool exists.
    """
    fit = actors_that_fit(nodes, request)
    if configured is None and fit >= 1:
        return max(1, min(fit, batches))
    if configured is not None and configured <= fit:
        return configured
    asked = configured if configured is not None else 1
    change = (
        f"set {SETTINGS}.actors to {fit} or fewer, or " if fit >= 1 else f"lower {SETTINGS}.num_cpus_per_actor / num_gpus_per_actor or "
    )
    raise RayPoolDoesNotFitError(
        f"the Ray cluster cannot hold the scoring pool: it has {describe_cluster(nodes)}; the pool asks "
        f"{request.describe(asked)} ({SETTINGS}.actors={configured if configured is not None else 'unset'}, "
        f"num_cpus_per_actor={request.cpus_per_actor:g}, num_gpus_per_actor={request.gpus_per_actor:g}, "
        f"num_cpus_per_read_task={request.cpus_per_read_task:g}), and at most {fit} actor(s) fit while a read task "
        f"still finds its CPUs on some node. To run: {change}add nodes (ray start --address ... --num-cpus N"
        f"{' --num-gpus N' if request.gpus_per_actor else ''})."
    )


def no_progress_message(
    timeout_s: float, nodes: Sequence[NodeResources], available: Mapping[str, float], request: PoolRequest, actors: int, detail: str
) -> str:
    """Why a Ray job was cancelled for making no progress, and what to change."""
    return (
        f"the Ray job made no progress for {timeout_s:g} s ({SETTINGS}.no_progress_timeout_s) and was cancelled: no "
        f"scored rows came back and no block moved between its stages. The cluster has {describe_cluster(nodes, available)}; "
        f"the pool asked {request.describe(actors)}. Usually other jobs hold the cluster's CPUs or GPUs (see `ray status` "
        f"and `ray list actors --filter state=ALIVE`), a node went away, or the autoscaler could not add one. Free or add "
        f"resources, lower {SETTINGS}.actors / num_cpus_per_actor / num_gpus_per_actor, or raise "
        f"{SETTINGS}.no_progress_timeout_s if the cluster may take longer to make room. Ray Data said: {detail}"
    )


def stages_no_progress_message(
    timeout_s: float, nodes: Sequence[NodeResources], available: Mapping[str, float], cpus_per_task: float, what: str
) -> str:
    """Why the Ray tasks of a day's stage were cancelled for making no progress, and what to change."""
    return (
        f"the Ray tasks that {what} made no progress for {timeout_s:g} s ({SETTINGS}.no_progress_timeout_s) and were "
        f"cancelled: none of them finished. The cluster has {describe_cluster(nodes, available)}; each task asks "
        f"{cpus_per_task:g} CPU ({SETTINGS}.num_cpus_per_stage_task). Usually other jobs hold the cluster's CPUs (see "
        f"`ray status`), a node went away, or a domain's feature function is stuck. Free or add resources, lower "
        f"{SETTINGS}.num_cpus_per_stage_task, or raise {SETTINGS}.no_progress_timeout_s if a bucket may take longer."
    )


def _units(value: float) -> int:
    return math.floor(value * _UNITS + 1e-6)
