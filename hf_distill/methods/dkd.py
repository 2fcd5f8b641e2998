"""DKD: Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation" (CVPR 2022).

Also home of :func:`linear_warmup`, the epoch-based loss warm-up of mdistiller, reusable by other methods.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationMethod, FeatureNeeds, Features, MethodNeeds, StepInfo
from .logit_standardization import maybe_standardize, resolve_temperature
from .registry import register_method

#: how :func:`linear_warmup` turns the trainer's fractional epoch into a warm-up factor.
WARMUP_GRANULARITIES = ("epoch", "step")

# Added to the ground-truth logit's negative before the non-target softmax. mdistiller subtracts 1000 from the
# tempered logit; exp(-1000) underflows to exactly 0 in float32 and float64, so the masked softmax equals the
# softmax over the non-target classes alone as long as |z / T| stays far below ~900.
_GT_MASK_OFFSET = 1000.0


def linear_warmup(step: StepInfo, epochs: float, granularity: str = "epoch") -> float:
    """Warm-up factor ``min(e / epochs, 1)`` of mdistiller's DKD, from the trainer's fractional epoch.

    mdistiller counts epochs from 1 and uses ``min(epoch / warmup, 1)`` for the whole epoch, so the first epoch
    already trains with ``1 / warmup``. ``step.epoch`` is the number of epochs completed before the current
    optimizer step (0.0 on the first step, 1.0 on the first step of the second epoch, ...). The mapping:

    * ``"epoch"`` (default, exactly mdistiller): ``e = floor(step.epoch) + 1``, constant over an epoch;
    * ``"step"``: ``e = step.epoch + 1``, a per-step linear ramp that equals mdistiller's value at the first step
      of every epoch and rises smoothly in between (useful for runs that last fewer epochs than the warm-up).

    Args:
        step: the batch context (only ``step.epoch`` is read).
        epochs: warm-up length in epochs; ``<= 0`` disables the warm-up (factor 1).
        granularity: ``"epoch"`` or ``"step"``.

    Returns:
        The factor, in ``(0, 1]``.

    Raises:
        ValueError: an unknown granularity.
    """
    if granularity not in WARMUP_GRANULARITIES:
        raise ValueError(f"warm-up granularity must be one of {WARMUP_GRANULARITIES}, got {granularity!r}")
    if epochs <= 0:
        return 1.0
    progress = max(float(step.epoch), 0.0)
    # the small tolerance keeps an epoch boundary reported as 0.9999999 from counting as the previous epoch
    e = math.floor(progress + 1e-9) + 1.0 if granularity == "epoch" else progress + 1.0
    return min(e / epochs, 1.0)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 4.0,
) -> tuple[Tensor, Tensor]:
    """The two parts of decoupled KD, each ``* T^2`` and averaged over the batch (not yet weighted).

    * TCKD = KL(b_t || b_s) with ``b = [p_gt, 1 - p_gt]`` the binary target / non-target probabilities of
      ``softmax(z / T)``;
    * NCKD = KL(q_t || q_s) with ``q`` the softmax over the non-target classes only.

    ``log b_s`` is computed in log space (``log p_gt`` and the log-sum-exp of the non-target log-probabilities)
    rather than as ``log(sum p)`` as in mdistiller: the same value, without ``log(0)`` when a probability
    underflows. NCKD uses mdistiller's "subtract 1000 from the ground-truth tempered logit" mask.

    Args:
        student_logits: (B, C), C >= 2.
        teacher_logits: (B, C).
        labels: (B,) ground-truth classes.
        temperature: softmax temperature T.

    Returns:
        (tckd, nckd), scalars.
    """
    if student_logits.shape[1] < 2:
        raise ValueError("DKD needs at least 2 classes (a target and a non-target part)")
    gt = F.one_hot(labels, student_logits.shape[1]).bool()
    zs = student_logits / temperature
    zt = teacher_logits / temperature

    def binary_log_probs(z: Tensor) -> Tensor:
        log_p = F.log_softmax(z, dim=1)
        log_gt = log_p.masked_select(gt).unsqueeze(1)
        log_other = torch.logsumexp(log_p.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
        return torch.cat([log_gt, log_other], dim=1)

    # KL terms written as p_t * (log p_t - log p_s) with finite log p_t: no xlogy, whose gradient with respect
    # to the teacher side is 0/0 at a zero probability (the teacher side is differentiable under SKD)
    log_bs, log_bt = binary_log_probs(zs), binary_log_probs(zt)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum() / zs.shape[0]

    offset = _GT_MASK_OFFSET * gt.to(zs.dtype)
    log_qs = F.log_softmax(zs - offset, dim=1)
    log_qt = F.log_softmax(zt - offset, dim=1)
    nckd = (log_qt.exp() * (log_qt - log_qs)).sum() / zs.shape[0]
    t2 = temperature**2
    return tckd * t2, nckd * t2


@register_method("dkd")
class DKD(DistillationMethod):
    """Decoupled knowledge distillation (mdistiller's DKD).

    ``L = w(epoch) * (alpha * TCKD + beta * NCKD)`` on the logits of both networks, with TCKD the KL divergence of
    the binary (target vs. rest) probabilities and NCKD the KL divergence among the non-target classes (see
    :func:`dkd_loss`), each ``* T^2 / B``, and ``w(epoch) = min(epoch / warmup_epochs, 1)`` (see
    :func:`linear_warmup`; mdistiller counts epochs from 1, so the first epoch already uses ``1 / warmup``).
    The objective adds ``ce_weight * CE`` (1.0, mdistiller ``CE_WEIGHT``); the method weight is 1.0 because
    mdistiller's alpha/beta already are the loss weights.

    Defaults are mdistiller's ``CFG.DKD`` (alpha 1, beta 8, T 4, warm-up 20 epochs). mdistiller's per-pair
    ``BETA`` overrides on CIFAR-100 (its ``configs/cifar100/dkd/*.yaml``, set by our recipe configs with
    ``--dkd-beta``): resnet56->resnet20 2.0, resnet110->resnet32 2.0, wrn40_2->wrn16_2 6.0, wrn40_2->wrn40_1
    6.0, vgg13->vgg8 6.0, vgg13->MobileNetV2 6.0; resnet32x4->resnet8x4/ShuffleV1/ShuffleV2, ResNet50->
    MobileNetV2 and wrn40_2->ShuffleV1 keep 8.0.

    Reads: student and teacher logits. No trainable parts, no buffers, no init stage.

    Args:
        alpha: weight of TCKD.
        beta: weight of NCKD.
        temperature: softmax temperature T (None: 4, or 2 with ``logit_standardize``).
        warmup_epochs: length of the linear warm-up in epochs (0 disables it).
        warmup_granularity: ``"epoch"`` (constant per epoch, as mdistiller) or ``"step"`` (per-step ramp), see
            :func:`linear_warmup`.
        logit_standardize: z-score both networks' logits before the softmax (Sun et al., CVPR 2024; see
            :mod:`hf_distill.methods.logit_standardization`).
    """

    summary = "KL split into target-vs-rest (TCKD) and among non-target classes (NCKD), reweighted"
    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"
    citation = (
        "@inproceedings{zhao2022dkd,\n  title={Decoupled Knowledge Distillation},\n"
        "  author={Zhao, Borui and Cui, Quan and Song, Renjie and Qiu, Yiyu and Liang, Jiajun},\n"
        "  booktitle={CVPR},\n  pages={11953--11962},\n  year={2022}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float | None = None,
        warmup_epochs: float = 20.0,
        warmup_granularity: str = "epoch",
        logit_standardize: bool = False,
    ) -> None:
        super().__init__()
        self.logit_standardize = bool(logit_standardize)
        if alpha < 0 or beta < 0:
            raise ValueError(f"dkd alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if warmup_epochs < 0:
            raise ValueError(f"dkd warmup_epochs must be >= 0 (0 disables the warm-up), got {warmup_epochs}")
        if warmup_granularity not in WARMUP_GRANULARITIES:
            raise ValueError(
                f"dkd warmup_granularity must be one of {WARMUP_GRANULARITIES}, got {warmup_granularity!r}"
            )
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = resolve_temperature(temperature, self.logit_standardize, "dkd")
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_granularity = warmup_granularity

    def needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(logits=True), teacher=FeatureNeeds(logits=True))

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        zs, zt = maybe_standardize(student.logits, teacher.logits, self.logit_standardize)
        tckd, nckd = dkd_loss(zs, zt, step.labels, self.temperature)
        w = linear_warmup(step, self.warmup_epochs, self.warmup_granularity)
        return {"dkd_tckd": w * self.alpha * tckd, "dkd_nckd": w * self.beta * nckd}


__all__ = ["DKD", "WARMUP_GRANULARITIES", "dkd_loss", "linear_warmup"]
