"""What, besides the model and its input, can change a score's last bits: recorded with every scored day."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import subprocess
from pathlib import Path

# Set in images built from a checkout (the Dockerfile passes it as a build argument): no .git folder there.
GIT_COMMIT_ENV = "BATCHINFER_GIT_COMMIT"


@functools.cache
def package_version() -> str:
    try:
        return importlib.metadata.version("batchinfer_assets")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def git_commit() -> str:
    """The commit of the checkout the package runs from (with `+dirty` for uncommitted changes), else the image's."""
    if os.environ.get(GIT_COMMIT_ENV, "").strip():
        return os.environ[GIT_COMMIT_ENV].strip()
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def torch_runtime() -> dict[str, object]:
    """torch version, BLAS/LAPACK it was built with, and the intra-op threads of this process."""
    import torch

    build = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", build)
    lapack = re.search(r"LAPACK_INFO=([^,\s]+)", build)
    return {
        "torch_version": torch.__version__,
        "torch_blas": blas.group(1) if blas else "unknown",
        "torch_lapack": lapack.group(1) if lapack else "unknown",
        "torch_threads": torch.get_num_threads(),
    }


def runtime_metadata() -> dict[str, object]:
    """Everything above, for a day's metadata."""
    return {**torch_runtime(), "package_version": package_version(), "git_commit": git_commit()}
