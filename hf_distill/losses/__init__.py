"""Distillation methods. Importing this package registers every method (one module each)."""

from . import ab, at, cc, crd, cskd, dkd, fitnet, fsp, ft, icd, iekd, kd, nst, pkt, rkd, skd, sp, vid  # noqa: F401  (importing a method module registers it)
from .base import (
    DataInfo,
    DistillationLoss,
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

__all__ = [
    "DataInfo",
    "DistillationLoss",
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
