"""Credentials are masked in every form of URI a setting or an error message can carry; nothing else changes."""

import traceback

import pytest

from batchinfer_assets.lib.redaction import RedactedError, redact, redacted_error


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://user:S3cret@mlflow:5000", "http://user:***@mlflow:5000"),
        ("https://user:S3cret@mlflow.internal/api/2.0/x?name=a&version=1", "https://user:***@mlflow.internal/api/2.0/x?name=a&version=1"),
        ("https://ghp_T0ken@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
        ("postgresql+psycopg://scorer:S3cret@db.internal:5432/predictions", "postgresql+psycopg://scorer:***@db.internal:5432/predictions"),
        # SQLAlchemy reads a password up to the "@", "/" included; urllib up to the last "@" of the netloc.
        ("postgresql+psycopg://scorer:S3/cret@db:5432/p", "postgresql+psycopg://scorer:***@db:5432/p"),
        ("postgresql://scorer:S3@cret@db/p", "postgresql://scorer:***@db/p"),
        (
            "postgresql+psycopg://db.internal/predictions?user=scorer&password=S3cret&sslmode=require",
            "postgresql+psycopg://db.internal/predictions?user=scorer&password=***&sslmode=require",
        ),
        ("sqlite:////var/lib/p.db?password=S3cret", "sqlite:////var/lib/p.db?password=***"),
        ("http://mlflow:5000/?token=S3cret&access_token=S3cret", "http://mlflow:5000/?token=***&access_token=***"),
        (
            "https://b.s3.amazonaws.com/r.html?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20250101"
            "&X-Amz-Security-Token=S3cret&X-Amz-Signature=S3cret",
            "https://b.s3.amazonaws.com/r.html?X-Amz-Algorithm=***&X-Amz-Credential=***&X-Amz-Security-Token=***&X-Amz-Signature=***",
        ),
        ("https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=S3cret%3D", "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=***"),
        ("ray://admin:S3cret@head:10001", "ray://admin:***@head:10001"),
        ("admin:S3cret@raycluster-head-svc:6379", "admin:***@raycluster-head-svc:6379"),
        ("host=db port=5432 user=scorer password=S3cret dbname=p", "host=db port=5432 user=scorer password=*** dbname=p"),
        (
            "API request to http://u:S3cret@127.0.0.1:1/api/x failed; then http://v:S3cret@k:2/y?token=S3cret "
            "(HTTPConnectionPool(host='127.0.0.1', port=1): url: /api/x?name=m&version=1)",
            "API request to http://u:***@127.0.0.1:1/api/x failed; then http://v:***@k:2/y?token=*** "
            "(HTTPConnectionPool(host='127.0.0.1', port=1): url: /api/x?name=m&version=1)",
        ),
        ("Could not connect to the endpoint URL: \"http://key:S3cret@minio:9000/bucket\"", "Could not connect to the endpoint URL: \"http://key:***@minio:9000/bucket\""),
        # Nothing to mask: unchanged.
        ("raycluster-head-svc:6379", "raycluster-head-svc:6379"),
        ("ray://head:10001", "ray://head:10001"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("sqlite:////home/me/.batchinfer/mlflow.db", "sqlite:////home/me/.batchinfer/mlflow.db"),
        ("s3://bucket/prefix/dt=2025-01-02/part-0.parquet", "s3://bucket/prefix/dt=2025-01-02/part-0.parquet"),
        ("models:/fraud-detector@champion", "models:/fraud-detector@champion"),
        ("2025-01-02 predictions: 1,500 rows at 10:30 with models:/fraud-detector/1", "2025-01-02 predictions: 1,500 rows at 10:30 with models:/fraud-detector/1"),
        ("mail ops@example.com about dt=2025-01-02", "mail ops@example.com about dt=2025-01-02"),
    ],
)
def test_redact_masks_credentials_and_leaves_the_rest(text, masked):
    assert redact(text) == masked
    assert redact(masked) == masked


def test_a_redacted_error_keeps_the_chain_and_tracebacks_without_the_secret():
    url = "http://u:" + "S3cret" + "@127.0.0.1:1/api"  # not in a source line the traceback shows

    def connect():
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    try:
        try:
            connect()
        except OSError as error:
            raise RuntimeError(f"API request to {url} failed") from error
    except RuntimeError as error:
        redacted = redacted_error(error)

    assert isinstance(redacted, RedactedError)
    assert str(redacted) == "RuntimeError: API request to http://u:***@127.0.0.1:1/api failed"
    assert str(redacted.__cause__) == "ConnectionRefusedError: [Errno 111] Connection refused"
    shown = "".join(traceback.format_exception(redacted))
    assert "S3cret" not in shown
    assert "in connect" in shown, "the original traceback is kept"
