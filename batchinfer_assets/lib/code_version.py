"""Code versions derived from the code itself, so a change to a stage's logic shows as a code change."""

from __future__ import annotations

import hashlib
import inspect
from types import ModuleType


def code_version_of(*modules: ModuleType) -> str:
    """A short sha256 of the modules' source text, in the given order."""
    digest = hashlib.sha256()
    for module in modules:
        source = inspect.getsource(module).encode()
        digest.update(module.__name__.encode() + b"\0" + len(source).to_bytes(8, "big") + source)
    return digest.hexdigest()[:12]
