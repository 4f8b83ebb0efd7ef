"""Resolve, fingerprint, log and load MLflow PyTorch models by URI; no Dagster here."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from batchinfer_assets.lib.redaction import redact

DEFAULT_MODEL_URI = "models:/fraud-detector@champion"
REFERENCE_ARTIFACT_PATH = "reference/training_sample.parquet"
INPUT_COLUMNS_METADATA_KEY = "input_columns"

ModelFormat = Literal["pickle", "pt2"]

_MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+|latest)/?$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+?)/?$")

# Pickle-format models execute code on load; MLflow 3.x refuses them unless this is set.
_ALLOW_PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


class ModelResolutionError(LookupError):
    """The model URI is malformed, unusable, or the registry or run does not hold it."""


class ModelNotFoundError(ModelResolutionError):
    """The registry or tracking server has no such model, version, alias or run."""


class ModelRegistryUnreachableError(ModelResolutionError):
    """The tracking server did not answer within MLflow's own (bounded) retries."""


# MLflow's HTTP client retries 7 times with a backoff factor of 2 and a 120 s timeout by default: an unreachable
# server took minutes to fail, and then the step's own retries multiplied it. Bounded here (about 15 s of
# retries and 30 s per request) unless the user set these variables; the step does not retry on top.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def bound_mlflow_http_retries() -> None:
    """Apply MLFLOW_HTTP_DEFAULTS to every variable the user left unset."""
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned to one immutable version, with what scoring and lineage need."""

    requested_uri: str
    pinned_uri: str
    name: str | None
    version: str
    run_id: str | None
    artifact_checksum: str
    input_columns: tuple[str, ...]
    model_format: ModelFormat
    tracking_uri: str
    registry_uri: str | None = None
    # A complete local copy of the version's artifacts (the model cache), loaded instead of downloading again.
    local_path: str | None = None
    # Where the pinned version's artifacts live (its `source`), and what names this version and no other:
    # a deleted model registered again restarts at version 1, so the name and version alone can be reused.
    artifact_source: str | None = None
    identity: str | None = None


def quiet_mlflow() -> None:
    """Turn off MLflow's download progress bars and chatty INFO lines."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.store.db.utils", "mlflow.tracking._model_registry.fluent", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The torch "+cpu" local-version note is logged on every log_model and is not actionable here.
    logging.getLogger("mlflow.utils.requirements_utils").setLevel(logging.ERROR)


# MLflow's fluent URIs are process globals: two threads setting and restoring them at once (the run's model
# loading on a worker thread while a stage reads the signature) would each restore what the other set.
_MLFLOW_URIS_LOCK = threading.RLock()


_MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def mlflow_uris(tracking_uri: str, registry_uri: str | None = None) -> Iterator[None]:
    """Point MLflow's global (fluent) tracking and registry URIs here, restoring the previous ones after.

    One thread at a time: another thread's `mlflow_uris` waits until this one has restored the URIs.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _MLFLOW_URIS_LOCK:
        # Read the module globals, not get_*_uri(): those resolve defaults and env, and restoring a
        # resolved value would pin it even where the caller had set nothing.
        previous_tracking = tracking_utils._tracking_uri
        previous_registry = registry_utils._registry_uri
        # MLflow also exports both URIs as environment variables "so that subprocess can inherit it": left behind,
        # every process this one starts later (a run worker, a training script) would use this registry.
        previous_env = {name: os.environ.get(name) for name in _MLFLOW_URI_VARIABLES}
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri or tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous_tracking)
            registry_utils._registry_uri = previous_registry
            for name, value in previous_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def make_client(tracking_uri: str, registry_uri: str | None = None):
    """An MlflowClient bound to explicit URIs."""
    import mlflow

    quiet_mlflow()
    bound_mlflow_http_retries()
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


def ensure_experiment(client, name: str, artifact_location: str | None) -> str:
    """Return the experiment id of `name`, creating it with `artifact_location` when absent."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if artifact_location is not None:
        if "://" not in artifact_location:
            Path(artifact_location).mkdir(parents=True, exist_ok=True)
        artifact_location = _as_artifact_uri(artifact_location)
    return client.create_experiment(name, artifact_location=artifact_location)


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a local sqlite store, an `mlartifacts` folder beside the database (not ./mlruns); else None."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        database = tracking_uri[len(prefix) :]
        if database and database != ":memory:":
            return str(Path(database).resolve().parent / "mlartifacts")
    return None


def _as_artifact_uri(location: str) -> str:
    return location if "://" in location else Path(location).resolve().as_uri()


def _pip_requirements() -> list[str]:
    import mlflow
    import torch

    # Explicit requirements skip MLflow's requirement inference, a subprocess that costs seconds
    # per logged model; the local "+cpu" label is dropped so the pin stays installable.
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy", "pandas"]


def log_torch_model(
    module,
    *,
    input_columns: Sequence[str],
    example: np.ndarray,
    serialization_format: ModelFormat = "pt2",
    name: str = "model",
    registered_model_name: str | None = None,
):
    """Log `module` (float32 (N, F) -> (N,) or (N, 1)) in the active run with a column-named signature."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature, set_signature

    quiet_mlflow()
    columns = list(input_columns)
    example = np.ascontiguousarray(example, dtype=np.float32)
    if example.ndim != 2 or example.shape[1] != len(columns) or example.shape[0] < 2:
        raise ValueError(
            f"example must be float32 of shape (rows >= 2, {len(columns)}) so the batch dimension stays dynamic; "
            f"got {example.shape}"
        )
    with torch.inference_mode():
        output = module(torch.from_numpy(example)).detach().cpu().numpy()
    column_signature = infer_signature(pd.DataFrame(example, columns=columns), output)
    common: dict[str, Any] = {
        "name": name,
        "pip_requirements": _pip_requirements(),
        "metadata": {INPUT_COLUMNS_METADATA_KEY: columns},
        "serialization_format": serialization_format,
    }
    if serialization_format == "pt2":
        # pt2 logging insists on a tensor signature to export the graph; the column signature is
        # written afterwards so the MLmodel names the inputs as the contract requires.
        info = mlflow.pytorch.log_model(
            module, signature=infer_signature(example, output), input_example=example, **common
        )
        set_signature(info.model_uri, column_signature)
    elif serialization_format == "pickle":
        with _pickle_warning_silenced():
            info = mlflow.pytorch.log_model(module, signature=column_signature, **common)
    else:
        raise ValueError(f"serialization_format must be 'pickle' or 'pt2', got {serialization_format!r}")
    if registered_model_name is not None:
        mlflow.register_model(info.model_uri, registered_model_name)
    return info


@contextlib.contextmanager
def _pickle_warning_silenced() -> Iterator[None]:
    logger = logging.getLogger("mlflow.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def is_missing_error(error: Exception) -> bool:
    """True when an MLflow error means 'no such model, version, alias or run'."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in {
        "RESOURCE_DOES_NOT_EXIST",
        "NOT_FOUND",
        "INVALID_PARAMETER_VALUE",
    }


@dataclass(frozen=True)
class PinnedModel:
    """One immutable model version: its URI, name, version, run, where its artifacts are, and its identity."""

    pinned_uri: str
    name: str | None
    version: str
    run_id: str | None
    source: str
    # Registry and version URI with the version's run id, artifact source and creation time: never the same for
    # two different registrations, even of one name and version number.
    identity: str


def pin_model_uri(client, uri: str, tracking_uri: str) -> PinnedModel:
    """Pin a models:/ or runs:/ URI to one version, with the identity that version cannot share with another."""
    from mlflow.exceptions import MlflowException

    tracking = redact(tracking_uri)
    try:
        if match := _MODELS_ALIAS.match(uri):
            model_version = client.get_model_version_by_alias(match["name"], match["alias"])
        elif match := _MODELS_VERSION.match(uri):
            if match["version"] == "latest":
                versions = client.search_model_versions(f"name = '{match['name']}'")
                if not versions:
                    raise ModelNotFoundError(f"Registered model {match['name']!r} has no versions ({uri}, tracking URI {tracking})")
                model_version = max(versions, key=lambda mv: int(mv.version))
            else:
                model_version = client.get_model_version(match["name"], match["version"])
        elif match := _RUNS.match(uri):
            run = client.get_run(match["run_id"])
            # Run ids are unique for good: the URI is its own identity.
            return PinnedModel(uri, None, run.info.run_id, run.info.run_id, uri, "\0".join((tracking, uri)))
        else:
            raise ModelResolutionError(
                f"Unsupported model URI {uri!r}: use models:/<name>@<alias>, models:/<name>/<version> "
                "or runs:/<run_id>/<path>"
            )
    except MlflowException as error:
        if is_missing_error(error):
            raise ModelNotFoundError(f"Model {uri!r} not found in MLflow at tracking URI {tracking}: {redact(error.message)}") from error
        if "API request to" in error.message and "failed with exception" in error.message:
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
            raise ModelRegistryUnreachableError(
                f"MLflow at {tracking} (MLFLOW_TRACKING_URI) did not answer for {uri!r} after {retries} retries: {redact(error.message)}"
            ) from error
        raise
    name, version = model_version.name, str(model_version.version)
    pinned_uri = f"models:/{name}/{version}"
    # Downloading the version's own source (not models:/name/N, which names whatever holds that number when the
    # download starts) keeps the bytes those of the version pinned here.
    source = model_version.source or pinned_uri
    identity = "\0".join((tracking, pinned_uri, model_version.run_id or "", source, str(model_version.creation_timestamp)))
    return PinnedModel(pinned_uri, name, version, model_version.run_id, source, identity)


def with_version(uri: str, version: str) -> str:
    """`models:/name/<version>` for a models:/ URI (alias or version), to reproduce with a recorded version."""
    if not str(version).isdigit():
        raise ModelResolutionError(f"model version to pin must be a registry version number, got {version!r}")
    match = _MODELS_ALIAS.match(uri) or _MODELS_VERSION.match(uri)
    if match is None:
        raise ModelResolutionError(
            f"cannot pin {uri!r} to version {version}: only models:/<name>@<alias> and models:/<name>/<version> "
            "URIs name a registered model (a runs:/ URI is pinned already)"
        )
    return f"models:/{match['name']}/{version}"


@contextlib.contextmanager
def downloaded_model(pinned_uri: str, tracking_uri: str, registry_uri: str | None = None) -> Iterator[Path]:
    """A private temporary copy of the model's artifacts (MLmodel, data/...), removed afterwards."""
    import mlflow.artifacts

    quiet_mlflow()
    # Always a copy: without dst_path a local store hands back its own folder, and a models:/
    # download then rewrites registered_model_meta inside the store.
    with tempfile.TemporaryDirectory(prefix="batchinfer-model-") as tmp, mlflow_uris(tracking_uri, registry_uri):
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned_uri, dst_path=tmp))


# Written by MLflow at download time (name/version when fetched through models:/, nulls through
# runs:/), so it describes the fetch, not the model.
_CHECKSUM_EXCLUDED = frozenset({"registered_model_meta", "batchinfer-description.json"})


def artifact_checksum(directory: Path) -> str:
    """sha256 over the model's files: sorted relative paths and their bytes (download bookkeeping excluded)."""
    digest = hashlib.sha256()
    directory = Path(directory)
    files = [p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() not in _CHECKSUM_EXCLUDED]
    for path in sorted(files, key=lambda p: p.relative_to(directory).as_posix()):
        relative = path.relative_to(directory).as_posix().encode()
        digest.update(len(relative).to_bytes(8, "big") + relative)
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_format_of(model_dir: Path) -> ModelFormat:
    """'pt2' or 'pickle', read from the pytorch flavor's data folder."""
    from mlflow.models import Model

    flavor = Model.load(str(model_dir)).flavors.get("pytorch")
    if flavor is None:
        raise ModelResolutionError(f"{model_dir} is not an mlflow.pytorch model (no 'pytorch' flavor)")
    data_dir = model_dir / flavor.get("model_data", "data")
    if (data_dir / "model.pt2").exists():
        return "pt2"
    if (data_dir / "model.pth").exists():
        return "pickle"
    raise ModelResolutionError(f"{data_dir} holds neither model.pt2 nor model.pth")


def input_columns_of(model_dir: Path, uri: str) -> tuple[str, ...]:
    """Input column names from the signature, or for a tensor-signature model from its metadata."""
    from mlflow.models import Model

    model = Model.load(str(model_dir))
    signature = model.signature
    if signature is not None and signature.inputs is not None and not signature.inputs.is_tensor_spec():
        names = signature.inputs.input_names()
        if names and all(isinstance(n, str) for n in names):
            return tuple(names)
    columns = (model.metadata or {}).get(INPUT_COLUMNS_METADATA_KEY)
    if columns:
        return tuple(str(c) for c in columns)
    raise ModelResolutionError(
        f"Model {uri!r} does not name its input columns: log it with a column-based signature "
        f"(or, for a tensor signature, metadata {{'{INPUT_COLUMNS_METADATA_KEY}': [...]}})"
    )


def describe_model(
    pinned: PinnedModel,
    requested_uri: str,
    *,
    tracking_uri: str,
    registry_uri: str | None = None,
    cache_dir: str | None = None,
) -> ResolvedModel:
    """Read the pinned version's checksum, input columns and format.

    With `cache_dir`, the version's artifacts are downloaded and checksummed once per machine and kept there under
    its identity (what a registered version or a run holds is immutable); later runs read the description and
    load the weights from that copy instead of the registry.
    """
    if cache_dir is not None:
        model_dir, description = cached_model(pinned, tracking_uri, registry_uri, Path(cache_dir))
        checksum, input_columns, model_format = description
        local_path: str | None = str(model_dir)
    else:
        with downloaded_model(pinned.source, tracking_uri, registry_uri) as model_dir:
            checksum, input_columns, model_format = _describe_files(model_dir, requested_uri)
        local_path = None
    return ResolvedModel(
        requested_uri=requested_uri,
        pinned_uri=pinned.pinned_uri,
        name=pinned.name,
        version=pinned.version,
        run_id=pinned.run_id,
        artifact_checksum=checksum,
        input_columns=input_columns,
        model_format=model_format,
        tracking_uri=tracking_uri,
        registry_uri=registry_uri,
        local_path=local_path,
        artifact_source=pinned.source,
        identity=pinned.identity,
    )


def _describe_files(model_dir: Path, uri: str) -> tuple[str, tuple[str, ...], ModelFormat]:
    return artifact_checksum(model_dir), input_columns_of(model_dir, uri), model_format_of(model_dir)


_CACHE_DESCRIPTION = "batchinfer-description.json"


def cached_model(
    pinned: PinnedModel, tracking_uri: str, registry_uri: str | None, cache_dir: Path
) -> tuple[Path, tuple[str, tuple[str, ...], ModelFormat]]:
    """(folder, (checksum, input columns, format)) of the pinned version's cached copy, made on first use.

    The entry is keyed by registry and the version's identity (run id, artifact source, creation time), never by
    name and version alone, which a deleted and re-registered model reuses. It is filled in a private folder
    and renamed into place whole, so concurrent first uses never see a partial copy (the loser of the race
    drops its own).
    """
    import json
    import shutil

    key = hashlib.sha256("\0".join((tracking_uri, registry_uri or "", pinned.identity)).encode()).hexdigest()[:24]
    entry = cache_dir / key
    description_file = entry / _CACHE_DESCRIPTION
    if not description_file.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        try:
            with downloaded_model(pinned.source, tracking_uri, registry_uri) as model_dir:
                checksum, columns, model_format = _describe_files(model_dir, pinned.pinned_uri)
                shutil.copytree(model_dir, staging / "model")
            description = {
                "pinned_uri": pinned.pinned_uri,
                "identity": pinned.identity,
                "artifact_checksum": checksum,
                "input_columns": list(columns),
                "model_format": model_format,
            }
            (staging / "model" / _CACHE_DESCRIPTION).write_text(json.dumps(description))
            try:
                os.rename(staging / "model", entry)
            except OSError:
                if not description_file.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    described = json.loads(description_file.read_text())
    if described.get("identity") != pinned.identity:
        # A key collision or an entry written by hand: never score with another version's files.
        raise ModelResolutionError(
            f"the model cache entry {entry} holds {described.get('pinned_uri')} of another registration than "
            f"{pinned.pinned_uri} now in the registry; delete that folder and run again"
        )
    return entry, (described["artifact_checksum"], tuple(described["input_columns"]), described["model_format"])


def load_reference_frame(client, run_id: str | None) -> pd.DataFrame | None:
    """The run's `reference/training_sample.parquet` artifact, or None when the run has none."""
    if run_id is None:
        return None
    folder, _, filename = REFERENCE_ARTIFACT_PATH.rpartition("/")
    if filename not in {Path(a.path).name for a in client.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, REFERENCE_ARTIFACT_PATH, tmp)
        return pd.read_parquet(local)


@contextlib.contextmanager
def _pickle_allowed(allow: bool) -> Iterator[None]:
    previous = os.environ.get(_ALLOW_PICKLE_ENV)
    if allow:
        os.environ[_ALLOW_PICKLE_ENV] = "true"
    try:
        yield
    finally:
        if allow:
            if previous is None:
                os.environ.pop(_ALLOW_PICKLE_ENV, None)
            else:
                os.environ[_ALLOW_PICKLE_ENV] = previous


def load_torch_module(resolved: ResolvedModel, device: str, *, allow_pickle: bool = True):
    """Load the pinned model as a callable torch module on `device`, in eval mode."""
    import mlflow.pytorch
    import torch

    quiet_mlflow()
    if resolved.model_format == "pickle" and not allow_pickle and os.environ.get(_ALLOW_PICKLE_ENV, "").lower() != "true":
        raise ModelResolutionError(
            f"{resolved.pinned_uri} is a pickle-format model and pickle loading is disabled; "
            "re-log it with serialization_format='pt2' or allow pickle models"
        )
    # From the model cache when the version is there; else a private download of the version's own source, removed
    # once the weights are in memory (without one a local store hands back its own folder and a models:/ fetch
    # writes registered_model_meta into it). A cached copy needs no registry, so the load does not hold MLflow's
    # global URIs (and a stage reading them meanwhile does not wait for the load).
    cached = bool(resolved.local_path and Path(resolved.local_path).is_dir())
    with contextlib.ExitStack() as stack:
        if cached:
            folder = Path(resolved.local_path)
            where = f"the model cache's copy {folder}"
            remedy = "delete that folder and run again"
        else:
            source = resolved.artifact_source or resolved.pinned_uri
            folder = stack.enter_context(downloaded_model(source, resolved.tracking_uri, resolved.registry_uri))
            where = f"the registry's copy ({source})"
            remedy = "the model changed in the registry since this run resolved it; run again"
        # What is loaded must be what was described, and what the predictions will record: the bytes are checked.
        found = artifact_checksum(folder)
        if found != resolved.artifact_checksum:
            raise ModelResolutionError(
                f"{resolved.pinned_uri}: {where} has checksum {found[:12]}, not {resolved.artifact_checksum[:12]} "
                f"as resolved; nothing was scored with it: {remedy}"
            )
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="batchinfer-load-"))
        stack.enter_context(_pickle_allowed(resolved.model_format == "pickle" and allow_pickle))
        if resolved.model_format == "pt2":
            # Exported programs keep their weights where they were exported (CPU for MLflow's
            # export); they are loaded there and moved afterwards.
            loaded = mlflow.pytorch.load_model(str(folder), dst_path=tmp)
        else:
            loaded = mlflow.pytorch.load_model(str(folder), dst_path=tmp, map_location=torch.device(device))
    if not isinstance(loaded, torch.nn.Module) and hasattr(loaded, "module"):
        loaded = loaded.module()
    if not callable(loaded):
        raise ModelResolutionError(f"{resolved.pinned_uri} loaded as {type(loaded).__name__}, which is not callable")
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.to(torch.device(device))
        # An exported (pt2) module refuses .eval(); it was traced in eval semantics already.
        if resolved.model_format == "pickle":
            loaded.eval()
    return loaded
