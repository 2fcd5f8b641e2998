"""OFD: Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ab import make_connector
from .base import DataInfo, DistillationMethod, Features, FeatureSpec, MethodNeeds, StepInfo
from .maps import PairedMaps
from .registry import register_method

#: below this probability of a negative pre-activation the margin is -3 standard deviations (the reference's rule)
MIN_NEGATIVE_PROBABILITY = 1e-3


def ofd_margin(weight: Tensor, bias: Tensor) -> Tensor:
    """Per-channel margin ``E[x | x < 0]`` for ``x ~ N(bias, |weight|^2)``: the expected negative response of a
    pre-activation that a BatchNorm with this affine part produces.

        m = bias - s * phi(bias / s) / Phi(-bias / s),   s = |weight|

    (phi, Phi: standard normal density and distribution); where ``Phi(-bias / s) <= 1e-3`` (almost never
    negative) the margin is ``-3 s``.

    Args:
        weight: (C,) BatchNorm weight (the standard deviation of the channel).
        bias: (C,) BatchNorm bias (its mean).

    Returns:
        (C,) margins, all negative.
    """
    s = weight.abs().double().clamp_min(1e-12)
    m = bias.double()
    z = m / s
    p_neg = torch.special.ndtr(-z)
    cond = -s * torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi) / p_neg.clamp_min(1e-300) + m
    return torch.where(p_neg > MIN_NEGATIVE_PROBABILITY, cond, -3 * s).to(weight.dtype)


def ofd_partial_l2(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 distance, summed over channels and positions, averaged over the batch.

    With teacher pre-activation ``t``, student (connector output) ``s`` and the channel margin ``m < 0``, the
    teacher's negative responses are replaced by the margin and a student already below its target costs nothing:

        d = (s - m)^2 [s > m, t <= m] + (s - t)^2 [s > t, m < t <= 0] + (s - t)^2 [t > 0]

    Args:
        source: (B, C, H, W) student maps through the connector.
        target: (B, C, H, W) teacher pre-activation maps.
        margin: (C,) per-channel margins.

    Returns:
        Scalar.
    """
    m = margin.view(1, -1, 1, 1).to(source.dtype)
    below = ((source > m) & (target <= m)).to(source.dtype)
    between = ((source > target) & (target > m) & (target <= 0)).to(source.dtype)
    positive = (target > 0).to(source.dtype)
    d = (source - m).pow(2) * below + (source - target).pow(2) * (between + positive)
    return d.sum() / source.shape[0]


def ofd_loss(student_maps: list[Tensor], teacher_maps: list[Tensor], margins: list[Tensor]) -> Tensor:
    """OFD over paired layers, shallow to deep: layer i of n weighs ``1 / 2^(n - i - 1)`` (the deepest 1); each
    teacher map is adaptive-average-pooled to its student map's size first.

    Args:
        student_maps: (B, C_i, H_i, W_i) student maps through their connectors.
        teacher_maps: (B, C_i, H'_i, W'_i) teacher pre-activation maps.
        margins: (C_i,) margins.

    Returns:
        Scalar loss.
    """
    n = len(student_maps)
    total = student_maps[0].new_zeros(())
    for i, (s, t, m) in enumerate(zip(student_maps, teacher_maps, margins, strict=True)):
        t = F.adaptive_avg_pool2d(t, s.shape[-2:]) if t.shape[-2:] != s.shape[-2:] else t
        total = total + ofd_partial_l2(s, t.detach(), m) / 2 ** (n - i - 1)
    return total


@register_method("ofd")
class OFD(PairedMaps, DistillationMethod):
    """Overhaul of feature distillation: the student's pre-ReLU stage maps, through a 1x1 conv + BN connector,
    regress the teacher's pre-ReLU maps with a partial L2 that ignores how negative the teacher is below a margin
    (:func:`ofd_partial_l2`, :func:`ofd_loss`).

    Margin: per teacher channel, from the BatchNorm in front of the teacher's map (:func:`ofd_margin`): read from
    the teacher model itself during the trainer's dry run (zoo, timm and transformers CNNs alike), kept as a buffer
    (checkpointed). A teacher map with no BatchNorm in front of it (a ViT, or a layer made by no module) is a clear
    error at build time.

    Defaults (mdistiller ``CFG.OFD``, ``distillers/OFD.py``): weight 1e-3 (``FEAT_WEIGHT``), CE weight 1, connector
    kernel 1 (He-normal conv, BN at identity), student and teacher maps pre-activation (``preact_feats[1:]``, the
    stage maps). Pre-activation maps come from CIFAR-zoo models only; for a timm or transformers network set
    ``student_preact`` / ``teacher_preact`` to false (post-activation maps, the margin still from the BatchNorm).

    Args:
        student_preact: read the student's maps before their final activation.
        teacher_preact: read the teacher's maps before their final activation.
        student_layers: student map selectors (shallow to deep).
        teacher_layers: teacher map selectors, paired in order (empty: as ``student_layers``).
    """

    summary = "partial L2 of connector(student) to the teacher's pre-ReLU maps, margin from the teacher's BN"
    paper = "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019"
    citation = (
        "@inproceedings{heo2019comprehensive,\n  title={A Comprehensive Overhaul of Feature Distillation},\n"
        "  author={Heo, Byeongho and Kim, Jeesoo and Yun, Sangdoo and Park, Hyojin and Kwak, Nojun and Choi, "
        "Jin Young},\n  booktitle={IEEE/CVF International Conference on Computer Vision (ICCV)},\n  year={2019}\n}"
    )
    default_weight = 1e-3
    default_ce_weight = 1.0
    resize_note = "the teacher's map average-pooled to the student's size"

    def __init__(
        self,
        student_preact: bool = True,
        teacher_preact: bool = True,
        student_layers: str = "stages",
        teacher_layers: str = "",
    ) -> None:
        super().__init__()
        self.student_preact = bool(student_preact)
        self.teacher_preact = bool(teacher_preact)
        self.select_layers(student_layers, teacher_layers)

    def needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=self.map_needs("student", self._student_sel, preact=self.student_preact),
            teacher=self.map_needs("teacher", self._teacher_sel, preact=self.teacher_preact, batchnorm=True),
        )

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.check_maps(student, teacher)
        connectors = []
        for i, (sn, tn) in enumerate(zip(self.student_layer_names, self.teacher_layer_names)):
            c_t = teacher.maps[tn][0]
            bn = teacher.batchnorm.get(tn)
            if bn is None:
                raise ValueError(
                    f"ofd takes its margin from the BatchNorm in front of each teacher map, but "
                    f"{teacher.layer('teacher', tn)} has none; select layers that follow a BatchNorm "
                    "with --ofd-teacher-layers, or use another feature method (e.g. fitnet, at, vid) for this teacher."
                )
            self.register_buffer(f"margin_{i}", ofd_margin(*bn))
            connectors.append(make_connector(student.maps[sn][0], c_t))
        self.connectors = nn.ModuleList(connectors)

    def margins(self) -> list[Tensor]:
        """The per-layer margins, shallow to deep."""
        return [getattr(self, f"margin_{i}") for i in range(len(self.connectors))]

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        s = [c(f) for c, f in zip(self.connectors, student.map_list(self.student_layer_names))]
        return {"ofd": ofd_loss(s, teacher.map_list(self.teacher_layer_names), self.margins())}


__all__ = ["OFD", "ofd_loss", "ofd_margin", "ofd_partial_l2"]
