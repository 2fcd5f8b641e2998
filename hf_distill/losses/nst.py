"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (arXiv 2017).

This module also holds two small helpers that the other map-based methods of the CRD benchmark (AB, FSP) share:
:func:`parse_layers` (the ``layers`` hyperparameter) and :func:`pool_to_common_size` (spatial size mismatch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    DataInfo,
    DistillationLoss,
    FeatureNeeds,
    Features,
    FeatureSpec,
    MapSelector,
    MethodNeeds,
    StepInfo,
)
from .registry import register_method


def parse_layers(value: str | int | Sequence[MapSelector], option: str) -> tuple[MapSelector, ...]:
    """Turn a ``layers`` hyperparameter into map selectors.

    Args:
        value: "stages", "last", "all", a layer name, an integer position, or a comma-separated list of those
            (e.g. ``"stage2,stage3"`` or ``"1,-1"``); a list/tuple of selectors is accepted as is.
        option: the hyperparameter's name, for the error message.

    Returns:
        The selectors, integers converted to ``int``.

    Raises:
        ValueError: the value names no layer at all.
    """
    if isinstance(value, int):
        return (value,)
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[MapSelector] = []
    for item in items:
        if isinstance(item, int):
            out.append(item)
            continue
        tok = str(item).strip()
        if not tok:
            continue
        try:
            out.append(int(tok))
        except ValueError:
            out.append(tok)
    if not out:
        raise ValueError(
            f"{option} selects no feature layer (got {value!r}); use 'stages', 'last', 'all', layer names or "
            "integer positions, comma-separated."
        )
    return tuple(out)


def pool_to_common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the spatially larger of two (B, C, H, W) maps down to the smaller size.

    RepDistiller does this for NST and FSP (square maps); height and width are handled separately here, so
    non-square maps work too.

    Args:
        a: (B, Ca, Ha, Wa).
        b: (B, Cb, Hb, Wb).

    Returns:
        ``a`` and ``b`` with spatial size (min(Ha, Hb), min(Wa, Wb)).
    """
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def check_conv_maps(spec: FeatureSpec, names: Sequence[str], who: str, method: str) -> None:
    """Raise a clear error if a selected map is not a (C, H, W) convolutional map."""
    for n in names:
        shape = spec.maps.get(n)
        if shape is None or len(shape) != 3:
            raise ValueError(
                f"{method} needs convolutional feature maps (C, H, W), but the {who} layer {n!r} has shape "
                f"{shape}. Use a CNN (CIFAR zoo, timm CNN) for {method}, or another method."
            )


def check_pairs(
    student_layers: Sequence[str], teacher_layers: Sequence[str], method: str, option: str
) -> None:
    """Raise a clear error when the selected student and teacher layers cannot be paired one to one."""
    if len(student_layers) != len(teacher_layers) or not student_layers:
        raise ValueError(
            f"{method} pairs the selected student and teacher layers one to one, but the student gives "
            f"{len(student_layers)} ({', '.join(student_layers) or 'none'}) and the teacher "
            f"{len(teacher_layers)} ({', '.join(teacher_layers) or 'none'}). Choose matching layers with "
            f"--{option}-layers (both sides) and --{option}-layers_teacher (teacher side only)."
        )


def polynomial_mmd(student: Tensor, teacher: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """Squared MMD between the channel sets of two maps with the kernel k(x, y) = (x.y + c)^degree.

    Every channel of a sample is one point (its vector over spatial positions); the MMD compares the student's set
    of channel points with the teacher's, per sample, and the result is averaged over the batch.

    Args:
        student: (B, Cs, N) per-channel vectors (already L2-normalized over N).
        teacher: (B, Ct, N) per-channel vectors (already L2-normalized over N); no gradient flows into them.

    Returns:
        Scalar: mean k(t, t') + mean k(s, s') - 2 mean k(s, t), means over the batch and the channel pairs.
    """

    def k(a: Tensor, b: Tensor) -> Tensor:
        # (B, Ca, Cb) via a batched product: never materializes the (B, Ca, Cb, N) tensor.
        return (torch.bmm(a, b.transpose(1, 2)) + c).pow(degree)

    tt = k(teacher, teacher).mean().detach()  # a constant: it only makes the value a true (>= 0) MMD
    return tt + k(student, student).mean() - 2.0 * k(student, teacher).mean()


def nst_loss(
    student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], degree: int = 2, c: float = 0.0
) -> Tensor:
    """NST loss summed over paired layers (RepDistiller ``NSTLoss``).

    Per pair: the larger map is adaptive-average-pooled to the smaller spatial size, each channel is flattened over
    positions and L2-normalized, and :func:`polynomial_mmd` compares the two sets of channels.

    Args:
        student_maps: list of (B, Cs_i, H_i, W_i).
        teacher_maps: list of (B, Ct_i, H'_i, W'_i) (channel counts may differ from the student's).
        degree: polynomial kernel degree (2 in the paper and RepDistiller).
        c: polynomial kernel offset (0 in the paper and RepDistiller).

    Returns:
        Scalar loss.
    """
    total = None
    for s, t in zip(student_maps, teacher_maps, strict=True):
        s, t = pool_to_common_size(s, t)
        fs = F.normalize(s.flatten(2), dim=2)
        ft = F.normalize(t.flatten(2), dim=2)
        term = polynomial_mmd(fs, ft, degree, c)
        total = term if total is None else total + term
    return total


@register_method("nst")
class NST(DistillationLoss):
    """Neuron Selectivity Transfer: match the distributions of the channels' spatial activation patterns.

    Formula (per paired layer, per sample; RepDistiller ``distiller_zoo/NST.py``): every channel of the map is a
    point f_i = vec(F_i) / ||vec(F_i)||_2 (flattened over spatial positions, L2-normalized); with the polynomial
    kernel k(x, y) = (x^T y + c)^d,

        MMD^2 = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{j,i} k(s_j, t_i)

    averaged over the batch and summed over the layers. The teacher-teacher term is a constant (kept, as
    RepDistiller's ``full_loss``, so the value is a true squared MMD >= 0).

    Features: the stage maps of both networks (post-activation; RepDistiller ``feat[1:-1]``; ``layers="stages"``).

    Defaults and sources: d = 2, c = 0 (paper's polynomial kernel, RepDistiller); weight 50 and CE weight 1
    (RepDistiller ``-b 50 -r 1``); no extra parameters, no initialization stage.

    Mismatched shapes: channel counts may differ (the kernel compares sets of channels, each set of any size);
    a spatial size mismatch is handled by adaptive average pooling of the larger map to the smaller size, as
    RepDistiller. The selected student and teacher layers must pair one to one (a clear error otherwise).

    Args:
        degree: polynomial kernel degree d.
        c: polynomial kernel offset (>= 0 keeps the kernel positive semi-definite).
        layers: map selectors for both networks ("stages", "last", "all", names, positions; comma-separated).
        layers_teacher: selectors for the teacher only (empty: same as ``layers``).
    """

    summary = "MMD (polynomial kernel) between the spatial activation patterns of the channels of stage maps"
    paper = "Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, arXiv 2017"
    citation = (
        "@article{huang2017like,\n  title={Like What You Like: Knowledge Distill via Neuron Selectivity Transfer},\n"
        "  author={Huang, Zehao and Wang, Naiyan},\n  journal={arXiv:1707.01219},\n  year={2017}\n}"
    )
    default_weight = 50.0
    default_ce_weight = 1.0

    def __init__(
        self, degree: int = 2, c: float = 0.0, layers: str = "stages", layers_teacher: str = ""
    ) -> None:
        super().__init__()
        if int(degree) != degree or degree < 1:
            raise ValueError(f"nst degree must be an integer >= 1, got {degree}")
        if c < 0:
            raise ValueError(
                f"nst c must be >= 0 (a negative offset breaks the kernel's positivity), got {c}"
            )
        self.degree = int(degree)
        self.c = float(c)
        self.layers = layers
        self.layers_teacher = layers_teacher
        self._student_sel = parse_layers(layers, "--nst-layers")
        self._teacher_sel = parse_layers(layers_teacher, "--nst-layers_teacher") if layers_teacher else None

    def needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=FeatureNeeds(maps=self._student_sel),
            teacher=FeatureNeeds(maps=self._teacher_sel or self._student_sel),
        )

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        check_pairs(self.student_layers, self.teacher_layers, "NST", "nst")
        check_conv_maps(student, self.student_layers, "student", "NST")
        check_conv_maps(teacher, self.teacher_layers, "teacher", "NST")

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        s = student.map_list(self.student_layers)
        t = teacher.map_list(self.teacher_layers)
        return {"nst": nst_loss(s, t, self.degree, self.c)}
