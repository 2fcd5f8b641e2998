"""SKD: Yuan, Lang, Quan, "Student-friendly Knowledge Distillation" (Knowledge-Based Systems 296:111915, 2024;
arXiv 2305.10893).

Only the abstract of the paper was available and no code is published, so the learning simplifier below is our
design; the class docstring says what is from the paper and what is not.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DataInfo, FeatureNeeds, Features, FeatureSpec, MethodNeeds, StepInfo
from .kd import kd_loss
from .registry import register_method
from .wrapped import WrappedMethod, parse_base_kwargs

#: softening temperature when neither ``temperature`` nor the base method gives one.
_FALLBACK_TEMPERATURE = 4.0


class LearningSimplifier(nn.Module):
    """Single-head self-attention over the batch of softened teacher logits, added to them as a bounded, gated
    residual.

    ``u`` (B x C) = teacher logits / T and ``x = LayerNorm(u)`` (no affine; the attention sees scale-free rows).
    ``Q, K, V = x W_q, x W_k, x W_v`` (C -> d), ``A = softmax(Q K^T / sqrt(d))`` (B x B: every sample attends to
    the other samples' teacher outputs), ``delta = tanh((A V) W_o)`` (d -> C) and
    ``out = u + max_shift * tanh(g) * delta``. The gate ``g`` starts at ``gate_init`` (0: the simplifier is the
    identity, so training starts as the plain base method, like a ReZero residual branch); the two ``tanh`` keep
    every simplified softened logit within ``max_shift`` of the teacher's, whatever the parameters become.

    Args:
        num_classes: C.
        dim: d, the attention width.
        gate_init: initial gate value.
        max_shift: largest change of a softened logit.
    """

    def __init__(
        self, num_classes: int, dim: int = 64, gate_init: float = 0.0, max_shift: float = 2.0
    ) -> None:
        super().__init__()
        self.dim = dim
        self.max_shift = max_shift
        self.q = nn.Linear(num_classes, dim)
        self.k = nn.Linear(num_classes, dim)
        self.v = nn.Linear(num_classes, dim)
        self.out = nn.Linear(dim, num_classes)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, u: Tensor) -> Tensor:
        """Map (B, C) softened teacher logits to (B, C) simplified softened logits."""
        x = F.layer_norm(u, u.shape[-1:])
        attn = torch.softmax(self.q(x) @ self.k(x).t() / math.sqrt(self.dim), dim=1)
        delta = torch.tanh(self.out(attn @ self.v(x)))
        return u + self.max_shift * torch.tanh(self.gate) * delta


@register_method("skd")
class SKD(WrappedMethod):
    """Student-friendly KD: a learned "simplifier" rewrites the softened teacher output into the target of a
    logit-based base method (KD, DKD, CSKD, ...), and is trained jointly with the student by that same loss.

    From the paper (abstract): the teacher logits are softened by a temperature, passed through an
    attention-based learning simplifier, and the result replaces the teacher target of an unchanged distillation
    loss; the simplifier is optimized together with the student by the distillation loss; it plugs into other
    logit-based methods.

    Our design (the paper's architecture and hyperparameters are not available):

    * Simplifier: :class:`LearningSimplifier`, single-head self-attention over the batch axis of ``u = z_t / T``
      (every sample's target may borrow from the teacher outputs of similar samples), added to ``u`` as a bounded
      residual through a gate initialized at 0, so training starts as the plain base method. Its output ``v``
      lives in softened-logit space and the base method receives ``T * v`` as the teacher "logits": the base's
      own softening ``softmax(T v / T) = softmax(v)`` gives the simplified distribution, and a base with
      per-sample temperatures (CSKD's CSWT) or a label split (DKD) works on it unchanged. ``T`` is the base
      method's ``temperature`` unless ``temperature`` is given (then the base sees a re-scaled target).
      Parameters: ``4 C d + 3 d + C + 1`` (d = ``attn_dim``).
    * Collapse guard: the simplifier is trained by the loss that compares its output with the student, whose
      trivial minimum is a target that imitates the student (and, KL(target || student) being mode-seeking, a
      sharp one). We keep (1) the bounded residual (``max_shift``: no softened logit moves by more than that from
      the teacher's; an unbounded residual can diverge), (2)
      ``anchor_weight * T^2 * KL(softmax(u) || softmax(v))``, which keeps the target near the teacher, and (3)
      ``label_weight * CE(T * v, y)``, the target's own classification loss at T = 1. Both guards train only
      the simplifier. Without a guard the target drifts onto the student; the anchor stops that, and label +
      anchor (the defaults) keep the target between teacher and student, which is the point of the method
      (the measurements are in the README).
    * Weights: the base's - SKD's class attributes are those of the default base (KD: method 0.9, CE 0.1, combo
      1.0); :meth:`default_weights` gives the base's for another base (DKD 1/1, CSKD 2/1).

    Terms: the base's terms prefixed ``skd_`` (e.g. ``skd_kd``, ``skd_dkd_tckd``), ``skd_label``, ``skd_anchor``.
    Reads what the base reads plus both networks' logits. Trainable: ``simplifier`` (and the base's own parts).
    No init stage (a base with an init stage is refused).

    Args:
        base: the logit-based method that receives the simplified target ("kd", "dkd", "cskd", ...).
        base_kwargs: its hyperparameters (a dict, or a JSON object string), e.g. ``{"beta": 8}``; stored (and
            logged) with the base's defaults filled in.
        temperature: softening temperature T of the simplifier (None: the base's ``temperature``, else 4).
        attn_dim: attention width d.
        gate_init: initial value of the residual gate.
        max_shift: largest change the simplifier may make to a softened teacher logit.
        label_weight: weight of the label (CE at T = 1) guard on the simplified target.
        anchor_weight: weight of the ``T^2``-scaled KL anchor of the simplified target to the softened teacher.
        logit_standardize: turn on the base's logit standardization (its ``logit_standardize``, Sun et al.,
            CVPR 2024): the base z-scores the student's logits and the simplified target before its softmax; the
            simplifier and the guards see the raw logits.
    """

    summary = "KD towards an attention-simplified, jointly learned teacher target (wraps a logit method)"
    paper = "Yuan et al., Student-friendly Knowledge Distillation, Knowledge-Based Systems 2024"
    citation = (
        "@article{yuan2024skd,\n  title={Student-friendly Knowledge Distillation},\n"
        "  author={Yuan, Mengyang and Lang, Bo and Quan, Fengnan},\n  journal={Knowledge-Based Systems},\n"
        "  volume={296},\n  pages={111915},\n  year={2024}\n}"
    )
    # those of the default base (KD); see default_weights() for another base
    default_weight = 0.9
    default_ce_weight = 0.1
    combo_weight = 1.0
    weights_from_base = True
    default_base = "kd"

    def __init__(
        self,
        base: str = "kd",
        base_kwargs: dict[str, Any] | str | None = None,
        temperature: float | None = None,
        attn_dim: int = 64,
        gate_init: float = 0.0,
        max_shift: float = 2.0,
        label_weight: float = 1.0,
        anchor_weight: float = 1.0,
        logit_standardize: bool = False,
    ) -> None:
        super().__init__()
        if logit_standardize:
            base_kwargs = {**parse_base_kwargs(base_kwargs, self.name), "logit_standardize": True}
        method = self.wrap(base or self.default_base, base_kwargs)
        if not method.needs().teacher.logits:
            raise ValueError(
                f"skd needs a base method that reads the teacher's logits (e.g. kd, dkd, cskd); {self.base!r} does not"
            )
        if method.init_stage is not None:
            raise ValueError(
                f"skd does not support a base method with an initialization stage ({self.base!r})"
            )
        if temperature is not None and temperature <= 0:
            raise ValueError(f"skd temperature must be > 0, got {temperature}")
        if max_shift <= 0:
            raise ValueError(f"skd max_shift must be > 0, got {max_shift}")
        if attn_dim < 1:
            raise ValueError(f"skd attn_dim must be >= 1, got {attn_dim}")
        if label_weight < 0 or anchor_weight < 0:
            raise ValueError(
                f"skd label_weight and anchor_weight must be >= 0, got {label_weight} and {anchor_weight}"
            )
        if temperature is None:
            t = getattr(method, "temperature", None)
            temperature = float(t) if isinstance(t, (int, float)) else _FALLBACK_TEMPERATURE
        self.temperature = float(temperature)
        self.attn_dim = int(attn_dim)
        self.gate_init = float(gate_init)
        self.max_shift = float(max_shift)
        self.label_weight = float(label_weight)
        self.anchor_weight = float(anchor_weight)
        self.logit_standardize = bool(getattr(method, "logit_standardize", False))

    def own_needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(logits=True), teacher=FeatureNeeds(logits=True))

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.simplifier = LearningSimplifier(
            teacher.logits[-1], self.attn_dim, self.gate_init, self.max_shift
        )

    def simplified_logits(self, teacher_logits: Tensor) -> Tensor:
        """The target handed to the base: ``T * simplifier(z_t / T)`` (logit space, see the class docstring)."""
        return self.temperature * self.simplifier(teacher_logits / self.temperature)

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        target = self.simplified_logits(teacher.logits)
        simplified = Features(logits=target, embedding=teacher.embedding, maps=teacher.maps)
        out = self.base_terms(student, simplified, step, prefix="skd_")
        if self.label_weight > 0:
            out["skd_label"] = self.label_weight * F.cross_entropy(target, step.labels)
        if self.anchor_weight > 0:
            # KD from the softened teacher u to the target v: T^2 KL(softmax(u) || softmax(v))
            out["skd_anchor"] = self.anchor_weight * kd_loss(target, teacher.logits, self.temperature)
        return out


__all__ = ["SKD", "LearningSimplifier"]
