"""Transient failures are retried with backoff; bad data fails once, with the problem named."""

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest
import pandas as pd
from pydantic import Field

from batchinfer_assets.definitions import build_definitions
from batchinfer_assets.resources.landing_zone import LandingZoneResource, ParquetLandingZoneResource, SyntheticLandingZoneResource
from batchinfer_assets.resources.model_registry import MlflowModelRegistryResource
from batchinfer_assets.retries import TRANSIENT_RETRY, TransientStepError
from batchinfer_assets.settings import Settings
from batchinfer_assets_tests.support import materialize_pipeline, pipeline_resources

DAY = "2025-05-06"


class FlakyLandingZoneResource(LandingZoneResource):
    """A landing zone whose first reads fail like a dropped connection, then serve the synthetic day."""

    failures: int = Field(description="How many reads fail before one succeeds.")
    attempts_file: str = Field(description="Counts reads across retries (each try may rebuild the resource).")

    def location(self, day: dt.date) -> str:
        return f"flaky://{day}"

    def _read_day(self, day: dt.date, domain) -> pd.DataFrame:
        counter = Path(self.attempts_file)
        attempts = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(attempts + 1))
        if attempts < self.failures:
            raise ConnectionResetError(f"connection reset while listing {self.location(day)}")
        return SyntheticLandingZoneResource(rows_per_day=200).load_day(day, domain)


def _resources(tmp_path: Path, landing: LandingZoneResource) -> dict:
    # raw_transactions alone never touches the model registry.
    unused_registry = MlflowModelRegistryResource(tracking_uri=f"sqlite:///{tmp_path / 'unused-mlflow.db'}")
    return pipeline_resources(tmp_path / "storage", unused_registry, landing_zone=landing)


def _events(result, event_type: dg.DagsterEventType):
    return [e for e in result.all_events if e.event_type == event_type]


def test_every_daily_asset_retries_transient_failures(tmp_path):
    defs = build_definitions(Settings.from_env({}, cwd=tmp_path))
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable:
            assert graph.assets_def_for_key(key).op.retry_policy == TRANSIENT_RETRY, key.to_user_string()


def test_a_transient_failure_is_retried_and_the_day_lands(tmp_path):
    landing = FlakyLandingZoneResource(failures=1, attempts_file=str(tmp_path / "attempts"))
    result = materialize_pipeline(_resources(tmp_path, landing), ["raw_transactions"], partition_key=DAY)
    assert result.success
    assert len(_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert (tmp_path / "attempts").read_text() == "2"
    assert list((tmp_path / "storage" / "raw_transactions" / f"dt={DAY}").glob("*.parquet"))


class CredentialedFlakyLandingZoneResource(FlakyLandingZoneResource):
    """The flaky landing zone behind a URL that carries a password, which its errors name."""

    def location(self, day: dt.date) -> str:
        return f"https://reader:S3cretLanding@landing.internal/dt={day}"


def test_a_retried_failure_is_shown_masked_and_still_retried(tmp_path):
    landing = CredentialedFlakyLandingZoneResource(failures=1, attempts_file=str(tmp_path / "attempts"))
    result = materialize_pipeline(_resources(tmp_path, landing), ["raw_transactions"], partition_key=DAY)
    assert result.success
    [retry] = _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    shown = dg.serialize_value(retry)
    assert "https://reader:***@landing.internal" in shown
    assert "S3cretLanding" not in shown


def test_bad_landing_data_fails_once_without_retry(tmp_path):
    (tmp_path / "landing").mkdir()
    result = materialize_pipeline(
        _resources(tmp_path, ParquetLandingZoneResource(uri=str(tmp_path / "landing"))),
        ["raw_transactions"],
        partition_key=DAY,
        raise_on_error=False,
    )
    assert not result.success
    assert _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == []
    failure = _events(result, dg.DagsterEventType.STEP_FAILURE)[0].step_failure_data
    assert "LandingDataError: no landing data for 2025-05-06" in failure.user_failure_data.description


class BuggyLandingZoneResource(LandingZoneResource):
    """A landing zone with a bug: the same error on every try."""

    def location(self, day: dt.date) -> str:
        return f"buggy://{day}"

    def _read_day(self, day: dt.date, domain) -> pd.DataFrame:
        return pd.DataFrame({"transaction_id": ["t1"]})["amount"]  # KeyError, whatever the moment


def test_an_error_that_cannot_clear_fails_once_naming_day_and_stage(tmp_path):
    result = materialize_pipeline(
        _resources(tmp_path, BuggyLandingZoneResource()), ["raw_transactions"], partition_key=DAY, raise_on_error=False
    )
    assert not result.success
    assert _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == [], "a bug is not retried"
    failure = _events(result, dg.DagsterEventType.STEP_FAILURE)[0].step_failure_data
    assert failure.user_failure_data.description == f"{DAY} raw_transactions: KeyError: 'amount'"


def _client_error(code: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")


def _wrapped(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("while reading the day") from cause
    except RuntimeError as error:
        return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (_wrapped(ConnectionRefusedError("refused")), True),
        ("botocore.exceptions.EndpointConnectionError", True),
        ("botocore.exceptions.NoCredentialsError", False),
        (_client_error("SlowDown"), True),
        (_client_error("AccessDenied"), False),
        ("sqlalchemy:connection refused", True),
        ("sqlalchemy:password authentication failed for user", False),
        ("mlflow:TEMPORARILY_UNAVAILABLE", True),
        ("mlflow:RESOURCE_DOES_NOT_EXIST", False),
        (ValueError("invalid literal"), False),
        (KeyError("amount"), False),
        # What the pipeline step re-raises for a transient error, its message masked.
        (TransientStepError("ConnectionResetError: reset by peer"), True),
    ],
)
def test_only_failures_that_may_clear_with_time_are_transient(error, transient):
    from batchinfer_assets.retries import is_transient

    if isinstance(error, str):
        if error.startswith("botocore."):
            import botocore.exceptions

            cls = getattr(botocore.exceptions, error.rsplit(".", 1)[1])
            error = cls(endpoint_url="http://127.0.0.1:1") if "Endpoint" in error else cls()
        elif error.startswith("sqlalchemy:"):
            import sqlalchemy.exc

            error = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(error.split(":", 1)[1]))
        else:
            from mlflow.exceptions import MlflowException
            from mlflow.protos import databricks_pb2

            error = MlflowException("registry said no", error_code=getattr(databricks_pb2, error.split(":", 1)[1]))
    assert is_transient(error) is transient


def _sqlite_disk_full(tmp_path) -> BaseException:
    """SQLite's own SQLITE_FULL, through SQLAlchemy as the prediction database raises it (an OperationalError)."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'full.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA max_page_count=3")  # the database cannot grow: what a full disk does
            conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
            conn.exec_driver_sql("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100) INSERT INTO t SELECT hex(randomblob(2000)) FROM r")
    except sa.exc.OperationalError as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError("SQLite did not run out of space")


def _device_full() -> BaseException:
    """The kernel's own ENOSPC: a write to Linux's /dev/full (opened without truncating: it must stay a device)."""
    import os

    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        os.write(fd, b"part of a parquet file")
    except OSError as error:
        return error
    finally:
        os.close(fd)
    raise AssertionError("/dev/full accepted the write")


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs Linux's /dev/full to get a real ENOSPC")
def test_a_full_disk_or_read_only_file_system_is_not_transient(tmp_path):
    import errno
    import os

    from batchinfer_assets.retries import is_transient

    errors = [
        _sqlite_disk_full(tmp_path),
        _device_full(),
        OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "part-0.parquet")),
        OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "part-0.parquet")),
        _wrapped(_device_full()),
    ]
    for error in errors:
        assert not is_transient(error), error
    # Other operational database errors stay transient (a lock held by another writer clears).
    import sqlalchemy as sa

    assert is_transient(sa.exc.OperationalError("INSERT", {}, Exception("database is locked")))


def test_an_unreachable_model_registry_fails_once_naming_it(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    registry = MlflowModelRegistryResource(tracking_uri=f"http://127.0.0.1:{port}", model_uri="models:/fraud-detector/1")
    resources = pipeline_resources(tmp_path / "storage", registry)
    result = materialize_pipeline(resources, ["input_snapshot"], partition_key=DAY, raise_on_error=False)
    assert not result.success
    assert _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == []
    description = _events(result, dg.DagsterEventType.STEP_FAILURE)[0].step_failure_data.user_failure_data.description
    assert description.startswith(f"ModelRegistryUnreachableError: MLflow at http://127.0.0.1:{port} (MLFLOW_TRACKING_URI) did not answer")
    assert not (tmp_path / "storage" / "input_snapshot").exists(), "nothing written"
