"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DistillationMethod, FeatureNeeds, Features, MethodNeeds, StepInfo
from .distributed import gather_pair
from .registry import register_method


def cosine_conditional_probs(f: Tensor, eps: float = 1e-7) -> Tensor:
    """Conditional probabilities from the cosine-similarity kernel: rows of ``(cos + 1) / 2``, each summing to 1.

    Args:
        f: (B, D) features.
        eps: added to the norms (a zero vector gets similarity 0, kernel 1/2).

    Returns:
        (B, B) row-stochastic matrix.
    """
    f = f.reshape(f.shape[0], -1)
    unit = f / (f.norm(dim=1, keepdim=True) + eps)
    unit = torch.nan_to_num(unit, nan=0.0)  # the reference zeroes NaNs (non-finite inputs) the same way
    k = (unit @ unit.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT: ``mean_{ij} P_t[i,j] * log((P_t[i,j] + eps) / (P_s[i,j] + eps))`` (KL(P_t || P_s) averaged over the B^2
    entries, as in the authors' code).

    Args:
        student: (B, D_s) student features.
        teacher: (B, D_t) teacher features.
        eps: numerical floor (reference: 1e-7).

    Returns:
        Scalar loss.
    """
    p_s = cosine_conditional_probs(student, eps)
    p_t = cosine_conditional_probs(teacher, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_method("pkt")
class PKT(DistillationMethod):
    """Probabilistic Knowledge Transfer: match the batch's conditional probability distributions in feature space.

    From the penultimate vectors (RepDistiller ``feat[-1]``; the widths of the two sides may differ):
    ``K_ij = (cos(f_i, f_j) + 1) / 2``, ``P_ij = K_ij / sum_j K_ij`` for each network, and
    ``L = mean_{i,j} P^t_ij log((P^t_ij + eps) / (P^s_ij + eps))`` (the authors' code: a KL divergence averaged over
    all B^2 entries, hence the large default weight).

    Defaults (RepDistiller ``--distill pkt``: ``-r 1 -a 0 -b 30000``): eps 1e-7, weight 30000, CE weight 1.
    ``gather=True`` computes the loss over the global batch under DDP.

    Args:
        eps: numerical floor in the norms and the log ratio.
        gather: compute the loss over the global batch under DDP.
    """

    summary = (
        "KL divergence of cosine-kernel conditional probability distributions of the batch (penultimate)"
    )
    paper = "Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge Transfer, ECCV 2018"
    citation = (
        "@inproceedings{passalis2018learning,\n"
        "  title={Learning Deep Representations with Probabilistic Knowledge Transfer},\n"
        "  author={Passalis, Nikolaos and Tefas, Anastasios},\n"
        "  booktitle={European Conference on Computer Vision (ECCV)},\n  year={2018}\n}"
    )
    default_weight = 30000.0
    default_ce_weight = 1.0
    min_batch_size = 2  # one sample has no other sample to be conditioned on

    def __init__(self, eps: float = 1e-7, gather: bool = False) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"pkt eps must be > 0, got {eps}")
        self.eps = float(eps)
        self.gather = bool(gather)

    def needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(embedding=True), teacher=FeatureNeeds(embedding=True))

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        s, t = gather_pair(student.embedding, teacher.embedding, self.gather)
        return {"pkt": pkt_loss(s, t, self.eps)}
