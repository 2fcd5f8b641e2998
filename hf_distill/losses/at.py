"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional Neural
Networks via Attention Transfer" (ICLR 2017).

This module also holds two small helpers shared by the map-based methods of the CRD benchmark (FitNet, AT, SP,
VID): :func:`parse_map_option` (a hyperparameter that selects feature maps) and :func:`pool_to_common_size`
(RepDistiller's way of pairing maps of different spatial sizes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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

_INT = re.compile(r"^[+-]?\d+$")
LAYER_REDUCTIONS = ("sum", "mean")


def parse_map_option(value: str | int | Sequence[str | int], option: str) -> tuple[MapSelector, ...]:
    """Turn a map-selection hyperparameter into selectors (see ``hf_distill.losses.base.MapSelector``).

    Accepts a selector (``"stages"``, ``"last"``, ``"all"``, an int position, a layer name), a comma list of them as
    one string (``"stage1,stage3"``, ``"1,-1"``; integer-looking items become positions, as on the command line) or a
    list/tuple.

    Args:
        value: the hyperparameter value.
        option: the hyperparameter's name, for the error message.

    Returns:
        The selectors, in order.

    Raises:
        ValueError: empty or of an unsupported type.
    """
    if isinstance(value, bool):  # bool is an int subclass: reject it explicitly
        raise ValueError(f"{option} must select feature maps, got {value!r}")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        items: list[str | int] = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(
            f"{option} must be a layer selector, a comma list or a list of them, got {type(value).__name__}"
        )
    out: list[MapSelector] = []
    for it in items:
        if isinstance(it, bool) or not isinstance(it, (int, str)):
            raise ValueError(f"{option}: bad layer selector {it!r}")
        if isinstance(it, str):
            it = it.strip()
            if not it:
                raise ValueError(f"{option} contains an empty layer selector: {value!r}")
            if _INT.match(it):
                it = int(it)
        out.append(it)
    if not out:
        raise ValueError(f"{option} selects no feature map")
    return tuple(out)


def check_conv_map(shape: tuple[int, ...], layer: str, who: str, method: str) -> None:
    """Raise a clear error if a map is not a (C, H, W) convolutional map (e.g. transformer tokens (N, D))."""
    if len(shape) != 3:
        raise ValueError(
            f"{method} needs convolutional (C, H, W) feature maps, but the {who}'s layer {layer!r} has shape "
            f"{tuple(shape)} (transformer tokens?). Use an embedding-based method (cc, rkd, pkt) or sp, or choose "
            "convolutional layers."
        )


def check_pairing(n_student: int, n_teacher: int, method: str, student_opt: str, teacher_opt: str) -> None:
    """Raise a clear error when maps must be paired one to one but the two sides selected different counts."""
    if n_student != n_teacher:
        raise ValueError(
            f"{method} pairs student and teacher feature maps one to one, but {n_student} student and {n_teacher} "
            f"teacher maps are selected (the networks have different numbers of stages?). Select the same number "
            f"on both sides with --{method}-{student_opt} / --{method}-{teacher_opt}, e.g. 'stage1,stage2,stage3' "
            "or '1,2,-1'."
        )


def pool_to_common_size(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Bring two (B, C, H, W) maps to the same spatial size by adaptive average pooling of the larger one.

    RepDistiller (AT, VID) pools whichever map is larger to the other's size; this does it per dimension, which is
    the same for square maps and also covers non-square ones.

    Args:
        f_s: student map (B, C_s, H_s, W_s).
        f_t: teacher map (B, C_t, H_t, W_t).

    Returns:
        Both maps at (min(H_s, H_t), min(W_s, W_t)).
    """
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    if tuple(f_s.shape[2:]) != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if tuple(f_t.shape[2:]) != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return f_s, f_t


def reduce_layers(losses: list[Tensor], reduction: str) -> Tensor:
    """Combine per-layer losses: ``"sum"`` (RepDistiller's ``sum(loss_group)``) or ``"mean"``."""
    total = losses[0]
    for v in losses[1:]:
        total = total + v
    return total if reduction == "sum" else total / len(losses)


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention of a (B, C, H, W) map: ``normalize(mean_c f^p)`` flattened to (B, H*W), unit L2 rows."""
    return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1), dim=1)


def at_loss(
    student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], p: float = 2.0, reduction: str = "sum"
) -> Tensor:
    """Attention-transfer loss over paired maps.

    Per pair: both maps pooled to the smaller spatial size, then ``mean((at(f_s) - at(f_t))^2)`` over batch and
    positions; the pairs are summed (RepDistiller) or averaged.

    Args:
        student_maps: (B, C_s, H, W) maps.
        teacher_maps: (B, C_t, H', W') maps, same count.
        p: power of the activations.
        reduction: ``"sum"`` or ``"mean"`` over the pairs.

    Returns:
        Scalar loss.
    """
    losses = []
    for f_s, f_t in zip(student_maps, teacher_maps, strict=True):
        f_s, f_t = pool_to_common_size(f_s, f_t)
        losses.append((attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean())
    return reduce_layers(losses, reduction)


@register_method("at")
class AT(DistillationLoss):
    """Attention Transfer: match the normalized spatial attention maps of paired stages.

    ``at(f) = normalize(mean_c f^p)`` (flattened, unit L2 norm per sample); per pair of maps the loss is
    ``mean_{b,j} (at(f_s)_bj - at(f_t)_bj)^2``; the pairs are summed. Features: the intermediate stage maps of both
    networks (selector ``"stages"`` = RepDistiller ``feat[1:-1]``), paired in order.

    Defaults (RepDistiller ``--distill attention``: ``-r 1 -a 0 -b 1000``, ``Attention(p=2)``): p=2, weight 1000,
    CE weight 1, layers summed as in RepDistiller's ``loss_kd = sum(loss_group)`` (``layer_reduction="mean"``
    divides by the number of pairs, i.e. the same as weight 1000/num_pairs). Where the spatial sizes of a pair differ
    (e.g. resnet32x4 -> ShuffleNetV2), the larger map is adaptive-average-pooled to the smaller size before the
    attention is taken (RepDistiller). The number of selected maps must be equal on both sides.

    Args:
        p: exponent applied to the activations before the channel mean.
        student_maps: student map selectors (a selector, or a comma list such as ``"stage1,stage3"``).
        teacher_maps: teacher map selectors, paired in order with ``student_maps``.
        layer_reduction: ``"sum"`` (RepDistiller) or ``"mean"`` over the pairs.
    """

    summary = "L2 distance of normalized spatial attention maps (mean of squared activations) of every stage"
    paper = "Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017"
    citation = (
        "@inproceedings{zagoruyko2017paying,\n"
        "  title={Paying More Attention to Attention: Improving the Performance of Convolutional Neural Networks "
        "via Attention Transfer},\n"
        "  author={Zagoruyko, Sergey and Komodakis, Nikos},\n"
        "  booktitle={International Conference on Learning Representations (ICLR)},\n  year={2017}\n}"
    )
    default_weight = 1000.0
    default_ce_weight = 1.0

    def __init__(
        self,
        p: float = 2.0,
        student_maps: str = "stages",
        teacher_maps: str = "stages",
        layer_reduction: str = "sum",
    ) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"at p must be > 0, got {p}")
        if layer_reduction not in LAYER_REDUCTIONS:
            raise ValueError(f"at layer_reduction must be one of {LAYER_REDUCTIONS}, got {layer_reduction!r}")
        self.p = float(p)
        self.student_maps = student_maps
        self.teacher_maps = teacher_maps
        self.layer_reduction = layer_reduction
        self._s_sel = parse_map_option(student_maps, "at student_maps")
        self._t_sel = parse_map_option(teacher_maps, "at teacher_maps")

    def needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(maps=self._s_sel), teacher=FeatureNeeds(maps=self._t_sel))

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        check_pairing(
            len(self.student_layers), len(self.teacher_layers), "at", "student_maps", "teacher_maps"
        )
        for who, spec, layers in (
            ("student", student, self.student_layers),
            ("teacher", teacher, self.teacher_layers),
        ):
            for name in layers:
                check_conv_map(spec.maps[name], name, who, "at")

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        s = student.map_list(self.student_layers)
        t = teacher.map_list(self.teacher_layers)
        check_pairing(len(s), len(t), "at", "student_maps", "teacher_maps")
        return {"at": at_loss(s, t, self.p, self.layer_reduction)}
