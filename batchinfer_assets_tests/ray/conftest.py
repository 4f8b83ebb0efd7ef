"""One real two-node Ray cluster on loopback for the whole session (it takes seconds to start), always stopped."""

from __future__ import annotations

import os

import pytest

from batchinfer_assets_tests.ray.cluster import LOOPBACK_ENV, LoopbackRayCluster, start_cluster, stop_cluster
from batchinfer_assets_tests.s3.conftest import moto_endpoint, s3_env  # noqa: F401 - the S3 test's fixtures

# Each node reads S3 with its own credential chain, as on a real cluster: the S3 test's moto server accepts these.
NODE_S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="session")
def ray_cluster() -> LoopbackRayCluster:
    """Head and worker node on 127.0.0.1 with 1 logical CPU each, as `ray start --num-cpus 1` twice makes them (the smallest cluster the engine must not hang on); this process joins as a driver with auth off."""
    saved = {name: os.environ.get(name) for name in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)
    cluster = start_cluster(head_cpus=1, worker_cpus=1, node_env=NODE_S3_CREDENTIALS)
    try:
        yield cluster
    finally:
        import ray

        ray.shutdown()
        stop_cluster(cluster)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
