"""RKD: Park, Kim, Lu, Cho, "Relational Knowledge Distillation" (CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationMethod, FeatureNeeds, Features, MethodNeeds, StepInfo
from .distributed import gather_pair
from .registry import register_method


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of ``e`` (B, D), with a zero diagonal.

    Squared distances are clamped at ``eps`` before the square root so the gradient stays finite for coincident
    points (RepDistiller ``RKDLoss.pdist``).
    """
    sq = e.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def _normalized_distances(e: Tensor) -> Tensor:
    d = pairwise_distances(e)
    # mean over the positive (off-diagonal) distances; zeros add nothing to the sum, so this equals d[d > 0].mean()
    # without an empty-selection NaN for a batch of one
    return d / (d.sum() / (d > 0).sum().clamp(min=1))


def _angles(e: Tensor) -> Tensor:
    """cos of the angle at every anchor j between (e_i - e_j) and (e_k - e_j), flattened (B^3,) in (j, i, k) order.

    Computed from the Gram matrix G of the rows: <e_i - e_j, e_k - e_j> = G_ik - G_ij - G_jk + G_jj, which costs
    B^2 x D + B^3 instead of the B^3 x D of a batched product of the B^2 explicit difference vectors (RepDistiller);
    for a small student the difference is most of a training step. The rows are centered first (differences do not
    change) so the Gram entries stay of the size of the differences, which keeps float32 cancellation small.

    A difference shorter than a rounding-level fraction of the batch's spread (coincident points, including i = j)
    has no direction: its cosines are 0, as F.normalize of a zero vector gives in the explicit form, and no gradient
    flows through them.
    """
    x = e - e.mean(0, keepdim=True)
    g = x @ x.t()
    # inner[j, i, k] = <e_i - e_j, e_k - e_j>
    inner = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + g.diagonal().view(-1, 1, 1)
    sq = inner.diagonal(dim1=1, dim2=2)  # (j, i): ||e_i - e_j||^2
    tol = 100 * torch.finfo(e.dtype).eps * g.diagonal().max().detach().clamp(min=torch.finfo(e.dtype).tiny)
    apart = sq > tol
    inv = torch.where(apart, sq.clamp(min=tol).rsqrt(), torch.zeros_like(sq))
    cos = inner * inv.unsqueeze(2) * inv.unsqueeze(1)
    # |cos| <= 1 exactly; rounding may step over it by an ulp
    return cos.clamp(-1.0, 1.0).reshape(-1)


def rkd_loss(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """The two RKD terms (unweighted), each a Huber (smooth L1, beta 1) mean.

    * distance-wise: pairwise Euclidean distances, each divided by the batch's mean positive distance;
    * angle-wise: cosines of the angles formed by every triplet (anchor j; i, k).

    Args:
        student: (B, ...) student features (flattened per sample).
        teacher: (B, ...) teacher features.

    Returns:
        (distance loss, angle loss).
    """
    s = student.reshape(student.shape[0], -1)
    t = teacher.reshape(teacher.shape[0], -1)
    with torch.no_grad():
        t_d = _normalized_distances(t)
        t_a = _angles(t)
    loss_d = F.smooth_l1_loss(_normalized_distances(s), t_d)
    loss_a = F.smooth_l1_loss(_angles(s), t_a)
    return loss_d, loss_a


@register_method("rkd")
class RKD(DistillationMethod):
    """Relational KD: transfer the distance and angle structure of the batch's penultimate vectors.

    With ``psi_D(i,j) = ||e_i - e_j|| / mu`` (``mu`` = mean positive pairwise distance of the batch) and
    ``psi_A(i,j,k) = cos angle(e_i - e_j, e_k - e_j)``:
    ``rkd_dist = w_dist * mean smoothL1(psi_D^s, psi_D^t)`` and ``rkd_angle = w_angle * mean smoothL1(psi_A^s,
    psi_A^t)``, on the raw penultimate vectors (RepDistiller ``feat[-1]``; the two sides may have different widths).

    Defaults (RepDistiller ``--distill rkd``: ``-r 1 -a 0 -b 1``, ``RKDLoss(w_d=25, w_a=50)``): w_dist 25,
    w_angle 50, weight 1, CE weight 1. ``gather=True`` computes both terms over the global batch (the angle term
    costs B^3 memory for a batch of B). The two terms are returned already multiplied by their sub-weights.

    Args:
        w_dist: weight of the distance-wise term.
        w_angle: weight of the angle-wise term.
        gather: compute the loss over the global batch under DDP.
    """

    summary = (
        "Huber loss on the batch's normalized pairwise distances and triplet angles (penultimate vectors)"
    )
    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"
    citation = (
        "@inproceedings{park2019relational,\n  title={Relational Knowledge Distillation},\n"
        "  author={Park, Wonpyo and Kim, Dongju and Lu, Yan and Cho, Minsu},\n"
        "  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n  year={2019}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0
    min_batch_size = (
        3  # two samples: one distance, normalized to 1 on both sides, and no triplet for an angle
    )

    def __init__(self, w_dist: float = 25.0, w_angle: float = 50.0, gather: bool = False) -> None:
        super().__init__()
        if w_dist < 0 or w_angle < 0 or w_dist + w_angle == 0:
            raise ValueError(f"rkd w_dist and w_angle must be >= 0 and not both 0, got {w_dist}, {w_angle}")
        self.w_dist = float(w_dist)
        self.w_angle = float(w_angle)
        self.gather = bool(gather)

    def needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(embedding=True), teacher=FeatureNeeds(embedding=True))

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        s, t = gather_pair(student.embedding, teacher.embedding, self.gather)
        loss_d, loss_a = rkd_loss(s, t)
        return {"rkd_dist": self.w_dist * loss_d, "rkd_angle": self.w_angle * loss_a}
