"""CSKD: Ham, Kim, Lee, Lee, Kim, "Cosine Similarity Knowledge Distillation for Individual Class Information
Transfer" (arXiv 2311.14307), with its cosine-similarity weighted temperature (CSWT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationMethod, FeatureNeeds, Features, MethodNeeds, StepInfo
from .distributed import gather_no_grad, gather_with_grad
from .logit_standardization import maybe_standardize, resolve_temperature
from .registry import register_method

# The reference adds this to the denominator of the per-class cosine.
_COS_EPS = 1e-8
# Below this spread of the per-sample similarities, every sample gets the mean temperature: the linear map of
# CSWT divides by (s_max - s_min).
_SPREAD_EPS = 1e-6


def class_cosine_distance(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor
) -> Tensor:
    """``1 - mean_c cos_c``: cosine of every class's column of batch probabilities, averaged over classes.

    ``P = softmax(z / T)`` row-wise (B, C); ``cos_c = |<P_s[:, c], P_t[:, c]>| / (||P_s[:, c]|| ||P_t[:, c]|| +
    1e-8)``, i.e. how similarly the two networks spread one class's probability over the samples of the batch.

    Args:
        student_logits: (B, C).
        teacher_logits: (B, C).
        temperature: scalar, or (B, 1) per-sample temperatures (CSWT).

    Returns:
        Scalar in [0, 1] (not yet multiplied by T^2).
    """
    ps = F.softmax(student_logits / temperature, dim=1)
    pt = F.softmax(teacher_logits / temperature, dim=1)
    dot = (ps * pt).sum(dim=0).abs()
    norm = ps.norm(dim=0) * pt.norm(dim=0) + _COS_EPS
    return 1.0 - (dot / norm).mean()


def cswt_temperatures(
    student_logits: Tensor, teacher_logits: Tensor, low: float = 2.0, high: float = 6.0
) -> Tensor:
    """Per-sample temperatures of CSWT (no gradient).

    ``s_i = cos(softmax(z_s_i), softmax(z_t_i))`` at T = 1; ``T_i`` goes linearly from ``low`` at the most similar
    sample (``s_max``) to ``high`` at the least similar one (``s_min``):
    ``T_i = low + (high - low) * (s_max - s_i) / (s_max - s_min)``. When all samples are equally similar
    (``s_max - s_min <= 1e-6``: one sample, or identical rows), every sample gets ``(low + high) / 2``.

    Args:
        student_logits: (B, C).
        teacher_logits: (B, C).
        low: temperature of the most similar sample.
        high: temperature of the least similar sample.

    Returns:
        (B, 1) temperatures in [low, high], detached.
    """
    with torch.no_grad():
        s = F.cosine_similarity(F.softmax(student_logits, dim=1), F.softmax(teacher_logits, dim=1), dim=1)
        s_max, s_min = s.max(), s.min()
        spread = s_max - s_min
        # ratio 0.5 gives the mean temperature; torch.where instead of an `if` avoids a device sync
        ratio = torch.where(
            spread > _SPREAD_EPS, ((s_max - s) / spread.clamp_min(_SPREAD_EPS)).clamp(0.0, 1.0), 0.5
        )
        return (low + (high - low) * ratio).unsqueeze(1)


@register_method("cskd")
class CSKD(DistillationMethod):
    """Cosine-similarity KD over batch predictions, with cosine-similarity weighted temperatures (CSWT).

    ``P_s = softmax(z_s / T)``, ``P_t = softmax(z_t / T)`` (B x C); for every class c the cosine of the two
    B-vectors ``P_s[:, c]`` and ``P_t[:, c]`` (:func:`class_cosine_distance`);
    ``L_cs(T) = T^2 * (1 - mean_c cos_c)``. CSWT (:func:`cswt_temperatures`): per-sample temperatures ``T_i`` from
    the detached per-sample cosine of the T=1 predictions, mapped linearly from ``low_temperature`` (most similar
    sample) to ``high_temperature`` (least similar); ``L_cswt = mean(T_i)^2 * (1 - mean_c cos_c)`` with the rows
    softened by their own ``T_i``. Loss = ``L_cs(T) + L_cswt`` (terms ``cskd`` and ``cskd_cswt``); the method
    weight 2.0 is the reference's ``alpha_cs``, the CE weight 1.0.

    This is the minimal port of the reference distiller (an mdistiller/MLKD-style file, see the methods notes):
    its weak/strong augmentation views, teacher-confidence masks and auxiliary class/batch-correlation Gram losses
    belong to the MLKD training recipe and are not part of this loss.

    Defaults: T = 4 (mdistiller's KD temperature); ``low_temperature`` 2 and ``high_temperature`` 6 are NOT
    published (the config values were not found); they bracket T symmetrically, and the per-sample similarities
    of a batch spread over nearly all of [0, 1], so the min-max map uses the whole [low, high] range and the CSWT
    term stays of the size of ``L_cs(T)`` (the short check behind this choice is in the README).

    Reads: student and teacher logits. No trainable parts, no buffers, no init stage. The per-class cosines are a
    batch statistic: with ``gather=True`` they (and the CSWT min/max) are computed over the global batch under DDP.
    A batch of one sample gives cosines of ~1 (a near-zero loss): ``min_batch_size`` is 2; use a few dozen.

    Args:
        temperature: T of ``L_cs`` (None: 4, or 2 with ``logit_standardize``).
        low_temperature: CSWT temperature of the most similar sample.
        high_temperature: CSWT temperature of the least similar sample.
        use_cswt: add the CSWT term (False: ``L_cs(T)`` alone).
        gather: compute over the global batch under distributed training.
        logit_standardize: z-score both networks' logits (per sample, over the classes) before everything else,
            CSWT's temperatures included (Sun et al., CVPR 2024; see :mod:`hf_distill.methods.logit_standardization`).
    """

    summary = "per-class cosine similarity of batch predictions, with similarity-weighted temperatures"
    paper = (
        "Ham et al., Cosine Similarity Knowledge Distillation for Individual Class Information Transfer, 2023"
    )
    citation = (
        "@article{ham2023cskd,\n  title={Cosine Similarity Knowledge Distillation for Individual Class "
        "Information Transfer},\n  author={Ham, Gyeongdo and Kim, Seonghak and Lee, Suin and Lee, Jae-Hyeok and "
        "Kim, Daeshik},\n  journal={arXiv:2311.14307},\n  year={2023}\n}"
    )
    default_weight = 2.0
    default_ce_weight = 1.0
    min_batch_size = 2  # a class column of one sample has a cosine of 1

    def __init__(
        self,
        temperature: float | None = None,
        low_temperature: float = 2.0,
        high_temperature: float = 6.0,
        use_cswt: bool = True,
        gather: bool = False,
        logit_standardize: bool = False,
    ) -> None:
        super().__init__()
        self.logit_standardize = bool(logit_standardize)
        temperature = resolve_temperature(temperature, self.logit_standardize, "cskd")
        if not 0 < low_temperature <= high_temperature:
            raise ValueError(
                "cskd needs 0 < low_temperature <= high_temperature, got "
                f"low_temperature={low_temperature}, high_temperature={high_temperature}"
            )
        self.temperature = float(temperature)
        self.low_temperature = float(low_temperature)
        self.high_temperature = float(high_temperature)
        self.use_cswt = bool(use_cswt)
        self.gather = bool(gather)

    def needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(logits=True), teacher=FeatureNeeds(logits=True))

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        zs, zt = maybe_standardize(student.logits, teacher.logits, self.logit_standardize)
        if self.gather:
            # the teacher side carries a gradient only under SKD (a learned target): keep it then
            zs = gather_with_grad(zs)
            zt = gather_with_grad(zt) if zt.requires_grad else gather_no_grad(zt)
        t = self.temperature
        out = {"cskd": t * t * class_cosine_distance(zs, zt, t)}
        if self.use_cswt:
            temps = cswt_temperatures(zs, zt, self.low_temperature, self.high_temperature)
            out["cskd_cswt"] = temps.mean() ** 2 * class_cosine_distance(zs, zt, temps)
        return out


__all__ = ["CSKD", "class_cosine_distance", "cswt_temperatures"]
