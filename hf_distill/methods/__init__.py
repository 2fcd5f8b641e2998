"""Distillation methods. Importing this package registers every method (one module each, found by discovery)."""

import importlib
import pkgutil

from .base import (
    DataInfo,
    DistillationMethod,
    FeatureNeeds,
    Features,
    FeatureSpec,
    InitStage,
    MethodNeeds,
    StepInfo,
    resolve_selectors,
)
from .objective import DistillationObjective
from .registry import (
    METHODS,
    PRESETS,
    Preset,
    canonical,
    get_method,
    known_names,
    register_method,
    register_preset,
    resolve_objective,
)

# Discovery, not an import list: every module of this package is imported once, and a method module registers itself
# with @register_method when imported, so a new method is one file (plus its test) and no edit here.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "DataInfo",
    "DistillationMethod",
    "DistillationObjective",
    "FeatureNeeds",
    "FeatureSpec",
    "Features",
    "InitStage",
    "METHODS",
    "MethodNeeds",
    "PRESETS",
    "Preset",
    "StepInfo",
    "canonical",
    "get_method",
    "known_names",
    "register_method",
    "register_preset",
    "resolve_objective",
    "resolve_selectors",
]


def __getattr__(name: str):
    if (
        name == "DistillationLoss"
    ):  # the base class's name before 0.1.0.dev0 ("method" is the word everywhere)
        from .._moved import warn_moved

        warn_moved(f"{__name__}.DistillationLoss", f"{__name__}.DistillationMethod")
        return DistillationMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
