"""One declaration per stage of the day: what it materializes and checks, how it computes a day, what it reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from batchinfer_assets.assets._run import DayState, PipelineRun
    from batchinfer_assets.domain import Domain

DayFunction = Callable[["PipelineRun", "DayState"], Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]]


@dataclass(frozen=True)
class Stage:
    """A stage: the pipeline builds its specs, checks, code versions and day loop from these declarations alone.

    `reads` are the stored inputs the stage combines (each must come from the day's current raw data); `code` the
    modules besides the stage's own whose source decides its output; `domain_declaration` whether the domain's
    declaration (columns, rules, names) does too, `feature_code` whether the domain's feature function does;
    `uses_model` whether the stage needs the run's model version.
    """

    assets: tuple[str, ...]
    day: DayFunction
    specs: Callable[[Domain], Sequence[dg.AssetSpec]]
    checks: tuple[dg.AssetCheckSpec, ...] = ()
    reads: tuple[str, ...] = ()
    code: tuple[ModuleType, ...] = ()
    domain_declaration: bool = False
    feature_code: bool = False
    uses_model: bool = False

    @property
    def name(self) -> str:
        """How logs and errors name the stage: its assets."""
        return "/".join(self.assets)
