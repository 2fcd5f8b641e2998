"""The training objective: ``ce_weight * CE + sum_i weight_i * method_i``."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .base import DataInfo, DistillationMethod, FeatureNeeds, Features, FeatureSpec, MethodNeeds, StepInfo
from .distributed import global_batch_size
from .registry import ObjectiveSpec, check_weights, instantiate, resolve_objective

logger = logging.getLogger(__name__)


class NonFiniteLossError(ValueError):
    """Training produced a non-finite loss term, gradient or weight; the run stops before saving it."""


def short_batch_error(
    method: str, values: Mapping[str, float], rows: int, batch_size: int, step: int
) -> NonFiniteLossError:
    """The error for a method whose terms are not finite on an epoch's short last batch: the cause is the batch (the
    method needs more rows than it got, and its ``min_batch_size`` does not say so), not the learning rate."""
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    return NonFiniteLossError(
        f"Training stopped at step {step}: {method}'s loss is not finite ({shown}) on the short last batch of an "
        f"epoch, {rows} row(s) where the others have {batch_size}; {method} needs more rows than that (the learning "
        "rate is not the cause). Pass --dataloader_drop_last true, or make the training set a multiple of "
        "--per_device_train_batch_size (--max_train_samples)."
    )


def batch_minimums(method: DistillationMethod) -> list[DistillationMethod]:
    """The method itself and the methods it wraps that need more than one row (``min_batch_size > 1``)."""
    return [m for m in method.modules() if isinstance(m, DistillationMethod) and m.min_batch_size > 1]


def _gathers(m: DistillationMethod) -> bool:
    return bool(getattr(m, "gather", False))


def _who(key: str, method: DistillationMethod, m: DistillationMethod) -> str:
    return key if m is method else f"{key} (its base {m.name})"


def check_batch_size(methods: dict[str, DistillationMethod], per_device: int, num_processes: int = 1) -> None:
    """Refuse a batch too small for a method that compares the samples of a batch with each other.

    Each method (and each method it wraps) declares ``min_batch_size``; with ``gather=True`` it sees the global batch
    (``per_device * num_processes``), otherwise the batch of one process.

    Raises:
        ValueError: one line naming the method, the batch it would get and the minimum.
    """
    for key, method in methods.items():
        for m in batch_minimums(method):
            gather = _gathers(m)
            got = per_device * num_processes if gather else per_device
            if got < m.min_batch_size:
                who = _who(key, method, m)
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
        self, methods: dict[str, DistillationMethod], weights: dict[str, float], ce_weight: float = 1.0
    ):
        super().__init__()
        if set(methods) != set(weights):
            raise ValueError(f"weights {sorted(weights)} do not match methods {sorted(methods)}")
        check_weights(weights, ce_weight)
        self.methods = nn.ModuleDict(methods)
        self.weights = dict(weights)
        self.ce_weight = float(ce_weight)
        #: label smoothing of the cross-entropy with the labels (the trainer sets it from TrainingArguments'
        #: ``label_smoothing_factor``, which the Trainer's own loss would otherwise apply and ours would ignore)
        self.label_smoothing = 0.0
        #: method name -> batches on which it was skipped for having fewer rows than its ``min_batch_size``
        self.short_batch_skips: dict[str, int] = {}
        #: the configured per-device batch (set by :meth:`check_batch_size`); a smaller one is an epoch's short end
        self.batch_size: int | None = None

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
        """Build from ``--method`` style arguments (see :func:`~hf_distill.methods.registry.resolve_objective`)."""
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
        self.batch_size = int(per_device)

    def init_stage_methods(self) -> list[str]:
        return [k for k, m in self.methods.items() if m.init_stage is not None]

    def describe(self) -> dict[str, Any]:
        """Everything needed to reproduce the objective (logged, written into model cards); ``pairing``, once the
        methods are built, holds the (teacher map, student map) pairs of the methods that compare maps
        (``LayerPair.as_dict()`` each; docs/any_pair.md)."""
        out: dict[str, Any] = {
            "ce_weight": self.ce_weight,
            "methods": {k: {"weight": self.weights[k], **m.hparams()} for k, m in self.methods.items()},
        }
        if self.label_smoothing:
            out["label_smoothing"] = self.label_smoothing
        pairing = {
            k: [p.as_dict() for p in m.pairing]
            for k, m in self.methods.items()
            if getattr(m, "pairing", None)
        }
        if pairing:
            out["pairing"] = pairing
        return out

    # -- the loss ------------------------------------------------------------------------------------------------
    def forward(
        self, student: Features, teacher: Features | None, step: StepInfo
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return (total loss, named unweighted terms).

        A method (or a method it wraps) whose ``min_batch_size`` exceeds this batch is skipped: see
        :class:`~hf_distill.methods.base.DistillationMethod` and :meth:`short_of_minimum`.
        """
        terms: dict[str, Tensor] = {}
        ce = F.cross_entropy(student.logits.float(), step.labels, label_smoothing=self.label_smoothing)
        terms["ce"] = ce
        total = self.ce_weight * ce
        if teacher is None:
            return total, terms
        rows = int(step.labels.shape[0])
        # the global batch (an all-reduce: every process takes this branch alike), when a method gathers it
        gathered = any(_gathers(m) for method in self.methods.values() for m in batch_minimums(method))
        global_rows = global_batch_size(rows, step.labels.device) if gathered else rows
        for name, method in self.methods.items():
            if self.short_of_minimum(name, method, rows, global_rows):
                continue
            parts = method(student, teacher, step)
            if self.batch_size is not None and rows < self.batch_size:
                self._check_short_batch_terms(name, parts, rows, step)
            total = total + self.weights[name] * _sum(parts)
            terms.update(_prefixed(name, parts))
        return total, terms

    def short_of_minimum(self, name: str, method: DistillationMethod, rows: int, global_rows: int) -> bool:
        """Whether ``method`` is skipped on a batch of ``rows`` rows here and ``global_rows`` over all processes:
        it, or a method it wraps, needs more rows than it sees (the global batch for ``gather=True``). A skip is
        counted in :attr:`short_batch_skips` and logged the first time for each method."""
        for m in batch_minimums(method):
            seen, what = (global_rows, "global batch") if _gathers(m) else (rows, "batch")
            if seen >= m.min_batch_size:
                continue
            count = self.short_batch_skips.get(name, 0) + 1
            self.short_batch_skips[name] = count
            if count == 1:
                logger.warning(
                    "%s compares the samples of a batch and needs at least %d of them, but this %s has %d (the "
                    "last batch of an epoch is short when the training set is not a multiple of the batch size): "
                    "its terms are left out of this batch's loss (weight 0), here and on every such batch; "
                    "--dataloader_drop_last true drops these batches instead.",
                    _who(name, method, m),
                    m.min_batch_size,
                    what,
                    seen,
                )
            return True
        return False

    def _check_short_batch_terms(
        self, name: str, parts: dict[str, Tensor], rows: int, step: StepInfo
    ) -> None:
        """On an epoch's short last batch, stop on a non-finite term with a message naming the short batch as the
        cause (a method with too low a ``min_batch_size``), rather than the learning rate. One sync, on that batch
        only."""
        bad = {k: float(v.detach()) for k, v in parts.items() if not math.isfinite(float(v.detach()))}
        if bad:
            raise short_batch_error(name, bad, rows, self.batch_size or rows, step.global_step + 1)

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
