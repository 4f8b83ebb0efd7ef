"""The MLflow model registry the scorer resolves its model from."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field, PrivateAttr

from batchinfer_assets.domain import BUILT_IN_DOMAIN, load_domain

from batchinfer_assets.lib.model_loading import (
    DEFAULT_MODEL_URI,
    ModelNotFoundError,
    ResolvedModel,
    default_artifact_location,
    describe_model,
    is_missing_error,
    load_reference_frame,
    make_client,
    pin_model_uri,
    with_version,
)
from batchinfer_assets.lib.redaction import redact
from batchinfer_assets.tags import MODEL_VERSION_TAG

__all__ = [
    "DEFAULT_MODEL_URI",
    "MlflowModelRegistryResource",
    "ModelNotFoundError",
    "ResolvedModel",
]


class MlflowModelRegistryResource(dg.ConfigurableResource):
    """Resolves a model URI to one pinned MLflow model version, registering the demo model when the default is absent."""

    tracking_uri: str = Field(description="MLflow tracking URI, e.g. sqlite:///.batchinfer/mlflow.db or http://mlflow:5000.")
    registry_uri: Optional[str] = Field(
        default=None, description="MLflow model registry URI; the tracking URI when unset."
    )
    model_uri: str = Field(
        default=DEFAULT_MODEL_URI,
        description="Model to score with: models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>.",
    )
    artifact_location: Optional[str] = Field(
        default=None,
        description=(
            "Artifact location of the demo experiment when it has to be created; unset: an mlartifacts "
            "folder beside a local sqlite database, else the server's default."
        ),
    )
    cache_dir: Optional[str] = Field(
        default=None,
        description=(
            "Folder keeping each pinned version's artifacts and checksum once per machine (versions are immutable); "
            "unset: downloaded and checksummed again by every process."
        ),
    )
    demo_when_missing: bool = Field(
        default=True,
        description=(
            "Train and register the domain's demo model when model_uri is that model's default URI (the built-in "
            f"domain's: {DEFAULT_MODEL_URI}) and the registry lacks it. Any other missing model is an error."
        ),
    )
    demo_domain: str = Field(
        default=BUILT_IN_DOMAIN,
        description="module.path:attribute of the domain whose demo model is trained when it is missing.",
    )

    _described: dict[str, ResolvedModel] = PrivateAttr(default_factory=dict)
    _run_metrics: dict[tuple[str, str], Optional[float]] = PrivateAttr(default_factory=dict)

    def _client(self):
        return make_client(self.tracking_uri, self.registry_uri)

    def resolve(self, version: Optional[str] = None) -> ResolvedModel:
        """Pin model_uri (or, given `version`, that version of its registered model) and describe it."""
        requested = self.model_uri if version is None else with_version(self.model_uri, version)
        client = self._client()
        try:
            pinned = pin_model_uri(client, requested, self.tracking_uri)
        except ModelNotFoundError:
            if not (version is None and self.demo_when_missing and self.model_uri == load_domain(self.demo_domain).demo_model_uri):
                raise
            with demo_registration_lock(self.tracking_uri):
                # Another run may have registered it while this one waited for the lock.
                try:
                    pinned = pin_model_uri(client, requested, self.tracking_uri)
                except ModelNotFoundError:
                    self._register_demo()
                    pinned = pin_model_uri(client, requested, self.tracking_uri)
        # An alias can move between calls, so it is looked up every time; what one registration of a version
        # holds cannot change, so its download and checksum are done once (keyed by its identity: a model deleted
        # and registered again reuses the name and version number).
        cached = self._described.get(pinned.identity)
        if cached is None:
            cached = describe_model(
                pinned, requested, tracking_uri=self.tracking_uri, registry_uri=self.registry_uri, cache_dir=self.cache_dir
            )
            self._described[pinned.identity] = cached
        return _with_requested(cached, requested)

    def current_version(self) -> tuple[str, str]:
        """(pinned URI, version) that model_uri resolves to now: a registry lookup, nothing downloaded or trained."""
        pinned = pin_model_uri(self._client(), self.model_uri, self.tracking_uri)
        return pinned.pinned_uri, pinned.version

    def resolve_for_run(self, run_tags: Mapping[str, str]) -> ResolvedModel:
        """The run's model: the version its `batchinfer/model_version` tag pins, else what model_uri resolves to now."""
        return self.resolve(version=run_tags.get(MODEL_VERSION_TAG))

    def _register_demo(self) -> str:
        # Imported here: the demo pulls in the synthetic source and training code, which a user's
        # own model never needs.
        from batchinfer_assets.lib.demo_model import DEMO_ALIAS, register_demo_model

        return register_demo_model(
            tracking_uri=self.tracking_uri,
            registry_uri=self.registry_uri,
            artifact_location=self.artifact_location or default_artifact_location(self.tracking_uri),
            domain=load_domain(self.demo_domain),
            alias=DEMO_ALIAS,
        )

    def version_metric(self, name: str, version: str, metric: str, run_id: str | None = None) -> Optional[float]:
        """A metric (e.g. `holdout_roc_auc`) logged by the run that produced a model version; None when it has none.

        `name` and `version` as the predictions record them: a registered name and version, or, for a model
        scored from a `runs:/` URI, no name and the run id as the version. `run_id`, the run the predictions
        recorded, is read when given: a model deleted and registered again reuses its version numbers, so the
        version may name another run now. Cached per run, never per version: what a run logged does not change.
        """
        from mlflow.exceptions import MlflowException

        recorded = run_id
        try:
            if not run_id:
                run_id = self._client().get_model_version(name, version).run_id if name else version
            if not run_id:
                return None
            key = (run_id, metric)
            if key not in self._run_metrics:
                self._run_metrics[key] = self._client().get_run(run_id).data.metrics.get(metric)
        except MlflowException as error:
            if is_missing_error(error):
                what = f"model {name!r} version {version}" if name else f"run {version}"
                what += f" (run {recorded})" if recorded and name else ""
                raise ModelNotFoundError(f"{what} (named by the predictions) is not in MLflow at {redact(self.tracking_uri)}") from error
            raise
        return self._run_metrics[key]

    def load_reference(self, resolved: ResolvedModel) -> pd.DataFrame | None:
        """The model run's `reference/training_sample.parquet` artifact, or None when it has none."""
        return load_reference_frame(self._client(), resolved.run_id)


@contextlib.contextmanager
def demo_registration_lock(tracking_uri: str) -> Iterator[None]:
    """Held while the demo model is trained and registered, so first runs started together register it once.

    A file lock: it covers the processes of one machine (the demo's setting: a local store, or dagster dev
    with several runs); beside a sqlite store it lives next to the database, otherwise in the temp folder.
    """
    import fcntl

    url = tracking_uri.removeprefix("sqlite:///")
    folder = Path(url).parent if tracking_uri.startswith("sqlite:///") else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / f".batchinfer-demo-{hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]}.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _with_requested(resolved: ResolvedModel, requested_uri: str) -> ResolvedModel:
    from dataclasses import replace

    return resolved if resolved.requested_uri == requested_uri else replace(resolved, requested_uri=requested_uri)
