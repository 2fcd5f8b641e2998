"""The training objective: ``ce_weight * CE + sum_i weight_i * method_i``."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .base import DataInfo, DistillationLoss, FeatureNeeds, Features, FeatureSpec, MethodNeeds, StepInfo
from .registry import ObjectiveSpec, instantiate, resolve_objective


def check_batch_size(methods: dict[str, DistillationLoss], per_device: int, num_processes: int = 1) -> None:
    """Refuse a batch too small for a method that compares the samples of a batch with each other.

    Each method (and each method it wraps) declares ``min_batch_size``; with ``gather=True`` it sees the global batch
    (``per_device * num_processes``), otherwise the batch of one process.

    Raises:
        ValueError: one line naming the method, the batch it would get and the minimum.
    """
    for key, method in methods.items():
        for m in method.modules():
            if not isinstance(m, DistillationLoss) or m.min_batch_size <= 1:
                continue
            gather = bool(getattr(m, "gather", False))
            got = per_device * num_processes if gather else per_device
            if got < m.min_batch_size:
                who = key if m is method else f"{key} (its base {m.name})"
                seen = (
                    f"a global batch of {got} ({per_device} per device x {num_processes} processes, gather=True)"
                    if gather
                    else f"a batch of {got} per device"
                )
                raise ValueError(
                    f"{who} compares the samples of a batch and needs at least {m.min_batch_size} of them, but gets "
                    f"{seen}: raise --per_device_train_batch_size to {m.min_batch_size} or more."
                )


class DistillationObjective(nn.Module):
    """A weighted sum of distillation methods plus the cross-entropy term.

    Args:
        methods: method name -> method module.
        weights: method name -> weight.
        ce_weight: weight of the cross-entropy of the student's logits with the labels.
    """

    def __init__(
        self, methods: dict[str, DistillationLoss], weights: dict[str, float], ce_weight: float = 1.0
    ):
        super().__init__()
        if set(methods) != set(weights):
            raise ValueError(f"weights {sorted(weights)} do not match methods {sorted(methods)}")
        self.methods = nn.ModuleDict(methods)
        self.weights = dict(weights)
        self.ce_weight = float(ce_weight)

    @classmethod
    def from_spec(cls, spec: ObjectiveSpec) -> DistillationObjective:
        methods = {m: instantiate(m, spec.kwargs.get(m)) for m in spec.methods}
        return cls(methods, dict(zip(spec.methods, spec.weights)), spec.ce_weight)

    @classmethod
    def from_names(
        cls,
        method: str,
        weights: list[float] | None = None,
        ce_weight: float | None = None,
        method_kwargs: dict[str, dict[str, Any]] | None = None,
    ) -> DistillationObjective:
        """Build from ``--method`` style arguments (see :func:`~hf_distill.losses.registry.resolve_objective`)."""
        return cls.from_spec(resolve_objective(method, weights, ce_weight, method_kwargs))

    # -- declaration -------------------------------------------------------------------------------------------
    def needs(self) -> MethodNeeds:
        """Union of the methods' needs; the student's logits are always needed (CE, metrics)."""
        out = MethodNeeds(student=FeatureNeeds(logits=True))
        for m in self.methods.values():
            out = out | m.needs()
        for side in ("student", "teacher"):
            pre = [
                k
                for k, m in self.methods.items()
                if getattr(m.needs(), side).preact and getattr(m.needs(), side).maps
            ]
            post = [
                k
                for k, m in self.methods.items()
                if not getattr(m.needs(), side).preact and getattr(m.needs(), side).maps
            ]
            if pre and post:
                # One forward pass gives either pre- or post-activation maps of a network, not both.
                raise ValueError(
                    f"{', '.join(pre)} need pre-activation feature maps of the {side} and {', '.join(post)} "
                    "post-activation ones; these methods cannot be combined in one run."
                )
        return out

    @property
    def needs_teacher(self) -> bool:
        return self.needs().teacher.anything

    def student_layer_names(self) -> list[str]:
        return list(dict.fromkeys(n for m in self.methods.values() for n in m.student_layer_names))

    def teacher_layer_names(self) -> list[str]:
        return list(dict.fromkeys(n for m in self.methods.values() for n in m.teacher_layer_names))

    def resolve_layers(self, student_names: list[str], teacher_names: list[str]) -> None:
        for m in self.methods.values():
            m.resolve_layers(student_names, teacher_names)

    def build(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        for m in self.methods.values():
            m.build(student, teacher, data)

    def check_batch_size(self, per_device: int, num_processes: int = 1) -> None:
        """See :func:`check_batch_size` (called by the trainer once the batch size is known)."""
        check_batch_size(dict(self.methods.items()), per_device, num_processes)

    def init_stage_methods(self) -> list[str]:
        return [k for k, m in self.methods.items() if m.init_stage is not None]

    def describe(self) -> dict[str, Any]:
        """Everything needed to reproduce the objective (logged, written into model cards)."""
        return {
            "ce_weight": self.ce_weight,
            "methods": {k: {"weight": self.weights[k], **m.hparams()} for k, m in self.methods.items()},
        }

    # -- the loss ------------------------------------------------------------------------------------------------
    def forward(
        self, student: Features, teacher: Features | None, step: StepInfo
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return (total loss, named unweighted terms)."""
        terms: dict[str, Tensor] = {}
        ce = F.cross_entropy(student.logits.float(), step.labels)
        terms["ce"] = ce
        total = self.ce_weight * ce
        if teacher is None:
            return total, terms
        for name, method in self.methods.items():
            parts = method(student, teacher, step)
            total = total + self.weights[name] * _sum(parts)
            terms.update(_prefixed(name, parts))
        return total, terms

    def init_stage_forward(
        self, student: Features, teacher: Features, step: StepInfo
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the initialization stage: the sum of the stage losses of the methods that have one."""
        terms: dict[str, Tensor] = {}
        total = None
        for name in self.init_stage_methods():
            parts = self.methods[name].init_stage_loss(student, teacher, step)
            total = _sum(parts) if total is None else total + _sum(parts)
            terms.update(_prefixed(f"init_{name}", parts))
        if total is None:
            raise RuntimeError("no method of this objective has an initialization stage")
        return total, terms


def _sum(parts: dict[str, Tensor]) -> Tensor:
    if not parts:
        raise ValueError("a distillation method returned no loss terms")
    vals = list(parts.values())
    out = vals[0]
    for v in vals[1:]:
        out = out + v
    return out


def _prefixed(name: str, parts: dict[str, Tensor]) -> dict[str, Tensor]:
    return {(k if k == name or k.startswith(name + "_") else f"{name}_{k}"): v for k, v in parts.items()}
