"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (arXiv 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DataInfo, DistillationMethod, Features, FeatureSpec, StepInfo
from .maps import PairedMaps, pool_to_common_size, reduce_layers
from .registry import register_method


def polynomial_mmd(student: Tensor, teacher: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """Squared MMD between the channel sets of two maps with the kernel k(x, y) = (x.y + c)^degree.

    Every channel of a sample is one point (its vector over spatial positions); the MMD compares the student's set
    of channel points with the teacher's, per sample, and the result is averaged over the batch.

    For degree 1 and 2 the channel-pair sums have a closed form through the (N, N) Gram matrices over positions
    (:func:`_position_gram_means`), used when it is the cheaper one: late stages have far more channels than
    positions (a 512-channel 1x1 map costs 512^2 per sample by channel pairs, 1 by positions).

    Args:
        student: (B, Cs, N) per-channel vectors (already L2-normalized over N).
        teacher: (B, Ct, N) per-channel vectors (already L2-normalized over N); no gradient flows into them.

    Returns:
        Scalar: mean k(t, t') + mean k(s, s') - 2 mean k(s, t), means over the batch and the channel pairs.
    """
    cs, ct, n = student.shape[1], teacher.shape[1], student.shape[2]
    if degree <= 2 and n * (cs + ct + n) < cs * cs + cs * ct + ct * ct:
        tt, ss, st = _position_gram_means(student, teacher.detach(), degree, c)
        return tt + ss - 2.0 * st

    def k(a: Tensor, b: Tensor) -> Tensor:
        # (B, Ca, Cb) via a batched product: never materializes the (B, Ca, Cb, N) tensor.
        return (torch.bmm(a, b.transpose(1, 2)) + c).pow(degree)

    tt = k(teacher, teacher).mean().detach()  # a constant: it only makes the value a true (>= 0) MMD
    return tt + k(student, student).mean() - 2.0 * k(student, teacher).mean()


def _position_gram_means(s: Tensor, t: Tensor, degree: int, c: float) -> tuple[Tensor, Tensor, Tensor]:
    """mean k(t, t'), mean k(s, s'), mean k(s, t) for degree 1 or 2, from (N, N) Gram matrices over positions.

    With A (Ca, N) and B (Cb, N) the channel vectors of one sample, sum_{a, b} (a.b)^2 = ||A B^T||_F^2
    = <A^T A, B^T B>_F and sum_{a, b} a.b = (sum_a a).(sum_b b); (x + c)^2 = x^2 + 2cx + c^2 and the means divide
    by Ca Cb. Work B N^2 (Cs + Ct) instead of B N (Cs^2 + Cs Ct + Ct^2).
    """
    sums = {"s": s.sum(1), "t": t.sum(1)}  # (B, N)
    grams = {"s": s.transpose(1, 2) @ s, "t": t.transpose(1, 2) @ t} if degree == 2 else {}
    sizes = {"s": s.shape[1], "t": t.shape[1]}

    def mean_k(a: str, b: str) -> Tensor:
        linear = (sums[a] * sums[b]).sum(1) / (sizes[a] * sizes[b])  # (B,): mean of x.y
        if degree == 1:
            return (linear + c).mean()
        square = (grams[a] * grams[b]).sum((1, 2)) / (sizes[a] * sizes[b])  # mean of (x.y)^2
        return (square + 2 * c * linear + c * c).mean()

    return mean_k("t", "t"), mean_k("s", "s"), mean_k("s", "t")


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
    terms = []
    for s, t in zip(student_maps, teacher_maps, strict=True):
        s, t = pool_to_common_size(s, t)
        fs = F.normalize(s.flatten(2), dim=2)
        ft = F.normalize(t.flatten(2), dim=2)
        terms.append(polynomial_mmd(fs, ft, degree, c))
    return reduce_layers(terms, "sum")


@register_method("nst")
class NST(PairedMaps, DistillationMethod):
    """Neuron Selectivity Transfer: match the distributions of the channels' spatial activation patterns.

    Formula (per paired layer, per sample; RepDistiller ``distiller_zoo/NST.py``): every channel of the map is a
    point f_i = vec(F_i) / ||vec(F_i)||_2 (flattened over spatial positions, L2-normalized); with the polynomial
    kernel k(x, y) = (x^T y + c)^d,

        MMD^2 = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{j,i} k(s_j, t_i)

    averaged over the batch and summed over the layers. The teacher-teacher term is a constant (kept, as
    RepDistiller's ``full_loss``, so the value is a true squared MMD >= 0).

    Features: the stage maps of both networks (post-activation; RepDistiller ``feat[1:-1]``; ``student_layers="stages"``).

    Defaults and sources: d = 2, c = 0 (paper's polynomial kernel, RepDistiller); weight 50 and CE weight 1
    (RepDistiller ``-b 50 -r 1``); no extra parameters, no initialization stage.

    Mismatched shapes: channel counts may differ (the kernel compares sets of channels, each set of any size);
    a spatial size mismatch is handled by adaptive average pooling of the larger map to the smaller size, as
    RepDistiller. The selected student and teacher layers must pair one to one (a clear error otherwise).

    Args:
        degree: polynomial kernel degree d.
        c: polynomial kernel offset (>= 0 keeps the kernel positive semi-definite).
        student_layers: map selectors for both networks ("stages", "last", "all", names, positions; comma-separated).
        teacher_layers: selectors for the teacher only (empty: same as ``student_layers``).
    """

    summary = "MMD (polynomial kernel) between the spatial activation patterns of the channels of stage maps"
    paper = "Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, arXiv 2017"
    citation = (
        "@article{huang2017like,\n  title={Like What You Like: Knowledge Distill via Neuron Selectivity Transfer},\n"
        "  author={Huang, Zehao and Wang, Naiyan},\n  journal={arXiv:1707.01219},\n  year={2017}\n}"
    )
    default_weight = 50.0
    default_ce_weight = 1.0
    renamed_hyperparameters = {"layers": "student_layers", "layers_teacher": "teacher_layers"}

    def __init__(
        self, degree: int = 2, c: float = 0.0, student_layers: str = "stages", teacher_layers: str = ""
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
        self.select_layers(student_layers, teacher_layers)

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.check_maps(student, teacher)

    def pair_connector(self, index: int) -> str:
        return "none (channel-free: the kernel compares sets of channels)"

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        s = student.map_list(self.student_layer_names)
        t = teacher.map_list(self.teacher_layer_names)
        return {"nst": nst_loss(s, t, self.degree, self.c)}
