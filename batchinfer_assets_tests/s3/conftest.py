"""A real S3-compatible server for the session, and per-test buckets on it."""

import uuid
from dataclasses import dataclass

import pytest

from batchinfer_assets_tests.s3.server import running_moto_server

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """The endpoint URL of a `moto_server` process on 127.0.0.1, stopped after the session."""
    with running_moto_server(tmp_path_factory.mktemp("moto") / "moto_server.log") as endpoint:
        yield endpoint


@dataclass(frozen=True)
class S3Env:
    """The endpoint, a fresh bucket on it and a client for assertions."""

    endpoint: str
    bucket: str
    client: object


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch) -> S3Env:
    """boto3's own variables pointing at the moto server, and a bucket created for this test."""
    from dagster_aws.s3 import S3Resource

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = S3Resource(region_name=REGION).get_client()
    bucket = f"batchinfer-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Env(endpoint=moto_endpoint, bucket=bucket, client=client)
