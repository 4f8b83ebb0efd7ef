"""Daily batch ML inference as Dagster software-defined assets."""

# Every entry point (the code location, the summary, tests importing a stage module) imports the package first,
# so the policy on warnings about deliberately used Dagster features applies before any asset module loads.
import batchinfer_assets.warnings_policy  # noqa: F401

from batchinfer_assets.domain import Domain

__all__ = ["Domain"]
