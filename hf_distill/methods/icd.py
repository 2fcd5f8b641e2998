"""ICD: Giakoumoglou & Stathaki, "Invariant Consistency for Knowledge Distillation" (arXiv 2407.11802; v3 titled
"Discriminative and Consistent Representation Distillation", DCD). Also registers the ``icd_kd`` preset."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kd as _kd  # noqa: F401  (registers "kd", which the icd_kd preset uses)
from .base import DataInfo, DistillationMethod, FeatureNeeds, Features, FeatureSpec, MethodNeeds, StepInfo
from .distributed import gather_pair
from .registry import PRESETS, Preset, register_method, register_preset


def icd_loss(
    z_s: Tensor, z_t: Tensor, scale: Tensor | float, bias: Tensor | float = 0.0
) -> tuple[Tensor, Tensor]:
    """Contrastive and invariance parts of ICD for L2-normalized embeddings.

    ``L = scale * z_s @ z_t^T + bias`` (B x B; row i = student sample i against every teacher sample);
    contrastive = ``CE(L, arange(B))`` (the matching teacher sample is the positive, the other samples of the batch
    are the negatives); invariance = ``KL(p2 || p1)`` with ``p1 = log_softmax(L, dim=1)`` (student -> teacher
    rows), ``p2 = softmax(L, dim=0)^T`` (teacher -> student columns, transposed), summed and divided by B
    ("batchmean").

    Args:
        z_s: (B, D) normalized student projections.
        z_t: (B, D) normalized teacher projections.
        scale: the multiplier (inverse temperature) of the similarities.
        bias: added to every similarity.

    Returns:
        (contrastive, invariance), scalars.
    """
    logits = scale * (z_s @ z_t.t()) + bias
    n = logits.shape[0]
    contrastive = F.cross_entropy(logits, torch.arange(n, device=logits.device))
    log_p1 = F.log_softmax(logits, dim=1)
    log_p2 = F.log_softmax(logits, dim=0).t()
    invariance = (log_p2.exp() * (log_p2 - log_p1)).sum() / n
    return contrastive, invariance


@register_method("icd")
class ICD(DistillationMethod):
    """Invariant consistency distillation: in-batch InfoNCE with a learned scale and bias, plus a KL invariance
    penalty between the row (student->teacher) and column (teacher->student) distributions.

    ``z_s = normalize(embed_s(f_s))``, ``z_t = normalize(embed_t(f_t))`` with ``embed_* = Linear(dim, feat_dim)``
    on the penultimate embeddings (RepDistiller ``feat[-1]``); ``tau = clamp(exp(tau_param), max=max_tau)``;
    ``L = tau * z_s @ z_t^T + b``; loss = ``CE(L, arange(B)) + alpha_inv * KL(softmax(L, 0)^T || softmax(L, 1))``
    (:func:`icd_loss`; terms ``icd_con`` and ``icd_inv``). Defaults from the authors' code
    (giakoumoglou/distillers ``ICD.py``/``DCD.py``): feat_dim 128, alpha_inv 0.5, max_tau 10, tau_param 1.0
    (tau = e), b 0. Method weight 1 and CE weight 1 (README: ICD ``-a 0 -b 1``); the ``icd_kd`` preset adds KD at
    weight 1 (``-a 1 -b 1``). Negatives are the other samples of the batch only (no memory bank).

    The clamp, as in the reference, only caps the value: once ``exp(tau_param)`` exceeds ``max_tau`` the clamp
    passes no gradient to ``tau_param``, so it stays there (weight decay can bring it back) and the scale stays
    ``max_tau``. We clamp ``tau_param`` at ``log(max_tau)`` before the exponential (same value and gradient as
    clamping ``exp(tau_param)``, without the overflow to inf, and the NaN gradient, of a far overshot
    ``tau_param``).

    ``trainable_scale=False`` fixes the scale and the bias (b = 0). The reference's DCD ``trainable=False`` uses
    ``nce_t = 0.07`` as the *multiplier* of the cosine similarities, which confines the logits to [-0.07, 0.07]
    and makes the contrastive softmax almost uniform; we read that as a slip and default the fixed multiplier to
    ``1 / 0.07`` (dividing by the temperature 0.07, as CRD and InfoNCE do). ``fixed_scale=0.07`` reproduces the
    literal reference.

    Trainable parts: ``embed_s``, ``embed_t`` (built in :meth:`setup` from the embedding sizes, so any pair of
    dims works, e.g. resnet32x4 256 -> ShuffleNetV2 1024), ``tau_param`` and ``b`` (buffers when not trainable).
    No init stage. With ``gather=True`` the B x B matrix is built over the global batch under DDP.

    Args:
        feat_dim: size of the projection space.
        alpha_inv: weight of the invariance (KL) term.
        max_tau: upper clamp of the learned scale.
        init_tau_param: initial ``tau_param`` (the scale starts at ``exp(init_tau_param)``).
        init_bias: initial ``b``.
        trainable_scale: learn ``tau_param`` and ``b`` (False: fixed ``fixed_scale`` and b = 0).
        fixed_scale: the multiplier when ``trainable_scale=False``.
        gather: build the similarity matrix over the global batch under distributed training.
    """

    summary = (
        "in-batch contrastive alignment of projected embeddings with a learned scale and KL invariance term"
    )
    paper = "Giakoumoglou & Stathaki, Invariant Consistency for Knowledge Distillation (DCD), arXiv 2024"
    citation = (
        "@article{giakoumoglou2024icd,\n  title={Discriminative and Consistent Representation Distillation},\n"
        "  author={Giakoumoglou, Nikolaos and Stathaki, Tania},\n  journal={arXiv:2407.11802},\n  year={2024}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0
    min_batch_size = 2  # the negatives are the other samples of the batch

    def __init__(
        self,
        feat_dim: int = 128,
        alpha_inv: float = 0.5,
        max_tau: float = 10.0,
        init_tau_param: float = 1.0,
        init_bias: float = 0.0,
        trainable_scale: bool = True,
        fixed_scale: float = 1.0 / 0.07,
        gather: bool = False,
    ) -> None:
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"icd feat_dim must be >= 1, got {feat_dim}")
        if alpha_inv < 0:
            raise ValueError(f"icd alpha_inv must be >= 0, got {alpha_inv}")
        if max_tau <= 0:
            raise ValueError(f"icd max_tau must be > 0, got {max_tau}")
        if fixed_scale <= 0:
            raise ValueError(f"icd fixed_scale must be > 0, got {fixed_scale}")
        self.feat_dim = int(feat_dim)
        self.alpha_inv = float(alpha_inv)
        self.max_tau = float(max_tau)
        self.init_tau_param = float(init_tau_param)
        self.init_bias = float(init_bias)
        self.trainable_scale = bool(trainable_scale)
        self.fixed_scale = float(fixed_scale)
        self.gather = bool(gather)
        if self.trainable_scale:
            self.tau_param = nn.Parameter(torch.tensor(self.init_tau_param))
            self.b = nn.Parameter(torch.tensor(self.init_bias))
        else:
            self.register_buffer("tau_param", torch.tensor(math.log(self.fixed_scale)))
            self.register_buffer("b", torch.tensor(0.0))

    def needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(embedding=True), teacher=FeatureNeeds(embedding=True))

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        if student.embedding is None or teacher.embedding is None:
            raise ValueError("icd needs the penultimate embedding of both networks (the model offers none)")
        self.embed_s = nn.Linear(student.embedding[-1], self.feat_dim)
        self.embed_t = nn.Linear(teacher.embedding[-1], self.feat_dim)

    def scale(self) -> Tensor:
        """The current multiplier: ``clamp(exp(tau_param), max=max_tau)`` (or the fixed scale)."""
        if not self.trainable_scale:
            return self.tau_param.exp()
        # clamping the exponent instead of the exponential: the same value and gradient (none above the cap), but
        # no overflow of exp() - and a NaN gradient from inf * 0 - if tau_param is pushed far above the cap
        return self.tau_param.clamp(max=math.log(self.max_tau)).exp()

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        z_s = F.normalize(self.embed_s(student.embedding.flatten(1)), dim=1)
        z_t = F.normalize(self.embed_t(teacher.embedding.flatten(1)), dim=1)
        # with gather, every process evaluates the same global loss: the scale and bias get its full gradient
        # everywhere, the projections their slice's share scaled by the world size, so DDP's average is exact for both
        z_s, z_t = gather_pair(z_s, z_t, self.gather)
        con, inv = icd_loss(z_s, z_t, self.scale(), self.b)
        return {"icd_con": con, "icd_inv": self.alpha_inv * inv}


if "icd_kd" not in PRESETS:
    register_preset(
        "icd_kd",
        Preset(
            methods=(("kd", 1.0), ("icd", 1.0)),
            ce_weight=1.0,
            description="ICD + KD (giakoumoglou/distillers README: -r 1 -a 1 -b 1, kd_T 4)",
        ),
    )

__all__ = ["ICD", "icd_loss"]
