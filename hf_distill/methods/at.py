"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional Neural
Networks via Attention Transfer" (ICLR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from .base import DataInfo, DistillationMethod, Features, FeatureSpec, StepInfo
from .maps import PairedMaps, check_layer_reduction, pool_to_common_size, reduce_layers
from .registry import register_method


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
class AT(PairedMaps, DistillationMethod):
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
        student_layers: student map selectors (a selector, or a comma list such as ``"stage1,stage3"``).
        teacher_layers: teacher map selectors, paired in order with ``student_layers`` (empty: the student's).
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
    renamed_hyperparameters = {"student_maps": "student_layers", "teacher_maps": "teacher_layers"}
    legacy_defaults = {"teacher_layers": "stages"}

    def __init__(
        self,
        p: float = 2.0,
        student_layers: str = "stages",
        teacher_layers: str = "",
        layer_reduction: str = "sum",
    ) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"at p must be > 0, got {p}")
        check_layer_reduction(layer_reduction, "at")
        self.p = float(p)
        self.layer_reduction = layer_reduction
        self.select_layers(student_layers, teacher_layers)

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.check_maps(student, teacher)

    def pair_connector(self, index: int) -> str:
        return "none (channel-free attention maps)"

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        self.check_maps()
        s = student.map_list(self.student_layer_names)
        t = teacher.map_list(self.teacher_layer_names)
        return {"at": at_loss(s, t, self.p, self.layer_reduction)}
