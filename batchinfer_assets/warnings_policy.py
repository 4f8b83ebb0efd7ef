"""Silences Dagster's warnings about features this project uses on purpose, and nothing else.

Imported first by `batchinfer_assets.definitions`, so every process that loads the code location (the
CLI, `dg launch`, the webserver's code server, the daemon, each step subprocess) applies it before any
asset is defined. Each filter names the warning's category and the start of its message; any other
Beta/Preview/Supersession/Deprecation warning (a new use of an unstable API, one from a library)
still shows. Remove a filter when its reason no longer holds.
"""

from __future__ import annotations

import warnings

import dagster as dg

DELIBERATE_FEATURE_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # BackfillPolicy.single_run() on every daily asset is the design: a range of days is one run,
    # which loads the model once.
    (dg.BetaWarning, r"Parameter `backfill_policy` of function `\w+` is currently in beta"),
    # scoring_model is observable so that the resolved registry model version is its data version.
    (dg.BetaWarning, r"Function `observable_source_asset` is currently in beta"),
    # A one-day run sets input_snapshot's content hash as its data version (a range run cannot: one
    # data version per step output), so staleness follows the snapshot's content.
    (dg.BetaWarning, r"Parameter `data_version` of initializer `Output.__init__` is currently in beta"),
)
"""(category, regex matched at the start of the warning's message) of each silenced warning."""


def silence_deliberate_feature_warnings() -> None:
    """Installs the filters; idempotent (the warnings module drops an identical filter first)."""
    for category, message in DELIBERATE_FEATURE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


silence_deliberate_feature_warnings()
