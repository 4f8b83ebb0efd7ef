"""The project's code location: the pipeline for the settings in the environment (`BATCHINFER_*`, see the README)."""

from batchinfer_assets.project import build_definitions, build_resources, definitions_for
from batchinfer_assets.settings import Settings

__all__ = ["build_definitions", "build_resources", "defs", "definitions_for"]

defs = build_definitions(Settings.from_env())
