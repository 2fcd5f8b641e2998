"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from .base import DataInfo, DistillationMethod, Features, FeatureSpec, StepInfo
from .distributed import gather_with_grad
from .maps import PairedMaps, check_layer_reduction, reduce_layers
from .registry import register_method


def similarity_matrix(f: Tensor) -> Tensor:
    """Row-L2-normalized Gram matrix of the flattened activations: ``normalize(F F^T, rows)``, (B, B)."""
    flat = f.reshape(f.shape[0], -1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], reduction: str = "sum") -> Tensor:
    """Similarity-preserving loss over paired maps: ``||G_s - G_t||_F^2 / B^2`` per pair, summed (or averaged).

    Any shapes with the same batch size work (the B x B matrices do not depend on channels or spatial size).

    Args:
        student_maps: (B, ...) student activations.
        teacher_maps: (B, ...) teacher activations, same count.
        reduction: ``"sum"`` (RepDistiller) or ``"mean"`` over the pairs.

    Returns:
        Scalar loss.
    """
    losses = []
    for f_s, f_t in zip(student_maps, teacher_maps, strict=True):
        b = f_s.shape[0]
        diff = similarity_matrix(f_s) - similarity_matrix(f_t)
        losses.append(diff.pow(2).sum() / (b * b))
    return reduce_layers(losses, reduction)


@register_method("sp")
class SP(PairedMaps, DistillationMethod):
    """Similarity-Preserving KD: match the batch's pairwise-similarity matrices.

    For paired maps ``f_s`` (B, C_s, H_s, W_s) and ``f_t`` (B, C_t, H_t, W_t):
    ``G = normalize(vec(f) vec(f)^T)`` (rows L2-normalized, B x B) and ``L = ||G_s - G_t||_F^2 / B^2``. Works for any
    channel counts and spatial sizes. Features: the deepest map of each network (selector ``"last"`` = RepDistiller
    ``feat[-2]``); more pairs can be selected and are summed, as RepDistiller sums its list.

    Defaults (RepDistiller ``--distill similarity``: ``-r 1 -a 0 -b 3000``): last map, weight 3000, CE weight 1.
    ``gather=True`` computes G over the global batch of all processes (B = global batch size), which is what one
    process with the whole batch would compute; by default (RepDistiller, single GPU) each process uses its own batch.

    Args:
        student_layers: student map selectors (a selector or comma list).
        teacher_layers: teacher map selectors, paired in order (empty: the student's selectors).
        layer_reduction: ``"sum"`` (RepDistiller) or ``"mean"`` over the pairs.
        gather: compute the loss over the global batch under DDP.
    """

    summary = "Frobenius distance of the batch's row-normalized activation Gram matrices (last map)"
    paper = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019"
    citation = (
        "@inproceedings{tung2019similarity,\n  title={Similarity-Preserving Knowledge Distillation},\n"
        "  author={Tung, Frederick and Mori, Greg},\n"
        "  booktitle={IEEE/CVF International Conference on Computer Vision (ICCV)},\n  year={2019}\n}"
    )
    default_weight = 3000.0
    default_ce_weight = 1.0
    min_batch_size = 2  # the B x B similarity matrix of one sample is [[1]] on both sides
    resize_note = "none needed"
    renamed_hyperparameters = {"student_maps": "student_layers", "teacher_maps": "teacher_layers"}
    legacy_defaults = {"teacher_layers": "last"}

    def __init__(
        self,
        student_layers: str = "last",
        teacher_layers: str = "",
        layer_reduction: str = "sum",
        gather: bool = False,
    ) -> None:
        super().__init__()
        check_layer_reduction(layer_reduction, "sp")
        self.layer_reduction = layer_reduction
        self.gather = bool(gather)
        self.select_layers(student_layers, teacher_layers)

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.check_maps()

    def pair_connector(self, index: int) -> str:
        return "none (shape-free: batch similarity matrices)"

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        self.check_maps()
        s = student.map_list(self.student_layer_names)
        t = teacher.map_list(self.teacher_layer_names)
        if self.gather:
            s = [gather_with_grad(f) for f in s]
            t = [gather_with_grad(f) for f in t]
        return {"sp": sp_loss(s, t, self.layer_reduction)}
