"""The code location: batchinfer_assets' whole pipeline (assets, checks, jobs, schedule, sensors) for the fleet domain."""

from batchinfer_assets.project import definitions_for

defs = definitions_for("fleet.domain:domain")
