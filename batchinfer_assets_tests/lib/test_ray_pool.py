"""Sizing the Ray scoring pool from the cluster's nodes: what fits, what is refused and how the refusal reads."""

import pytest

from batchinfer_assets.lib.ray_pool import (
    NodeResources,
    PoolRequest,
    RayPoolDoesNotFitError,
    actors_that_fit,
    describe_cluster,
    nodes_from_ray,
    pool_size,
)

CPU_POOL = PoolRequest(cpus_per_actor=0.5, gpus_per_actor=0.0, cpus_per_read_task=0.25)
ONE_PLUS_ONE = [NodeResources(1), NodeResources(1)]


@pytest.mark.parametrize(
    ("nodes", "request_", "fit"),
    [
        # `ray start --num-cpus 1` twice: 2 CPUs; each node keeps 0.25 for a read task wherever the actors land -> 1.5 / 0.5.
        (ONE_PLUS_ONE, CPU_POOL, 3),
        ([NodeResources(2), NodeResources(2)], CPU_POOL, 7),
        ([NodeResources(1)], CPU_POOL, 1),
        # A 1-CPU actor on 1-CPU nodes: any node holding one has no room left for a read; both would leave none.
        (ONE_PLUS_ONE, PoolRequest(1.0, 0.0, 0.25), 1),
        ([NodeResources(1)], PoolRequest(1.0, 0.0, 0.25), 0),
        # Ray Data's default read task (1 CPU) next to any pool on 1 + 1 CPUs: nothing fits (the hang).
        (ONE_PLUS_ONE, PoolRequest(0.5, 0.0, 1.0), 0),
        # Fixed-point counting: three 0.1-CPU actors fit 0.55 CPUs beside a 0.25 read.
        ([NodeResources(0.55)], PoolRequest(0.1, 0.0, 0.25), 3),
        # GPU actors: one per GPU, on the nodes that have them; a head with no CPUs hosts neither actors nor reads.
        ([NodeResources(0), NodeResources(4, gpus=2), NodeResources(4)], PoolRequest(0.5, 1.0, 0.25), 2),
        ([NodeResources(4), NodeResources(4)], PoolRequest(0.5, 1.0, 0.25), 0),
        ([NodeResources(8, gpus=1)], PoolRequest(1.0, 0.5, 0.25), 2),
    ],
)
def test_actors_that_fit(nodes, request_, fit):
    assert actors_that_fit(nodes, request_) == fit


@pytest.mark.parametrize(
    ("configured", "batches", "size"),
    [
        (None, 16, 3),  # unset: what fits
        (None, 2, 2),  # unset, and a day of two batches: no third actor with nothing to score
        (None, 1, 1),
        (2, 16, 2),  # set: kept as it is
        (3, 1, 3),
    ],
)
def test_pool_size_on_one_plus_one_cpus(configured, batches, size):
    assert pool_size(ONE_PLUS_ONE, CPU_POOL, configured, batches) == size


def test_a_configured_pool_the_cluster_cannot_hold_is_refused_naming_the_cluster_and_the_setting():
    with pytest.raises(RayPoolDoesNotFitError) as refused:
        pool_size(ONE_PLUS_ONE, CPU_POOL, 4, 16)

    message = str(refused.value)
    assert "it has 2 node(s), 2 CPU(s) (1 + 1), 0 GPU(s)" in message
    assert "the pool asks 4 actor(s) x 0.5 CPU, and 0.25 CPU per read task (RayScoringEngine.actors=4," in message
    assert "at most 3 actor(s) fit" in message and "set RayScoringEngine.actors to 3 or fewer" in message


def test_a_gpu_pool_on_a_cluster_without_gpus_is_refused_even_unset():
    gpu_pool = PoolRequest(0.5, 1.0, 0.25)
    with pytest.raises(RayPoolDoesNotFitError) as refused:
        pool_size(ONE_PLUS_ONE, gpu_pool, None, 16)

    message = str(refused.value)
    assert "1 actor(s) x 0.5 CPU + 1 GPU" in message and "RayScoringEngine.actors=unset" in message
    assert "lower RayScoringEngine.num_cpus_per_actor / num_gpus_per_actor" in message and "--num-gpus N" in message


def test_nodes_from_ray_keeps_alive_nodes_and_their_totals():
    ray_nodes = [
        {"Alive": True, "Resources": {"CPU": 1.0, "memory": 1e9, "node:127.0.0.1": 1.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}},
        {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
    ]
    nodes = nodes_from_ray(ray_nodes)
    assert nodes == [NodeResources(1.0, 0.0), NodeResources(2.0, 1.0)]
    assert describe_cluster(nodes, {"CPU": 0.5}) == "2 node(s), 3 CPU(s) (1 + 2), 1 GPU(s); free now: 0.5 CPU(s), 0 GPU(s)"
