"""CRD: Tian, Krishnan, Isola, "Contrastive Representation Distillation" (ICLR 2020).

Also registers the ready combination ``crd_kd`` (RepDistiller's CRD+KD runs: ``-r 1 -a 1 -b 0.8``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import kd  # noqa: F401  (registers "kd", which the crd_kd preset uses)
from .base import DataInfo, DistillationMethod, FeatureNeeds, Features, FeatureSpec, MethodNeeds, StepInfo
from .crd_memory import MODES, ContrastMemory, exp_scores
from .distributed import gather_no_grad, gather_with_grad, world_size
from .registry import Preset, register_method, register_preset

#: RepDistiller's ``eps`` in the NCE loss.
NCE_EPS = 1e-7
NEGATIVES = ("bank", "batch")


def l2_normalize(x: Tensor) -> Tensor:
    """``x / ||x||_2`` per row, computed as RepDistiller's ``Normalize(2)`` (no epsilon: embeddings are never 0)."""
    return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


class Embed(nn.Module):
    """Linear projection to ``dim_out`` followed by L2 normalization (RepDistiller ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(self.linear(x.reshape(x.shape[0], -1)))


def nce_loss(x: Tensor, n_data: int, eps: float = NCE_EPS) -> Tensor:
    """NCE loss of Eq. 18 (RepDistiller ``ContrastLoss``), with m = K negatives and noise Pn = 1/n_data.

    ``L = -(1/B) * sum_b [ log(x_b0 / (x_b0 + m Pn + eps)) + sum_{k>=1} log(m Pn / (x_bk + m Pn + eps)) ]``

    Args:
        x: (B, K+1) normalized scores; column 0 is the positive.
        n_data: size of the training set.
        eps: numerical guard.

    Returns:
        Scalar loss.
    """
    b, m = x.shape[0], x.shape[1] - 1
    mpn = m * (1.0 / float(n_data))  # RepDistiller: m * Pn with Pn = 1 / n_data
    pos = x[:, 0]
    log_d1 = torch.log(pos / (pos + mpn + eps))
    neg = x[:, 1:]
    log_d0 = torch.log(torch.full_like(neg, mpn) / (neg + mpn + eps))
    return -(log_d1.sum() + log_d0.sum()) / b


def masked_nce_loss(pos: Tensor, neg: Tensor, neg_mask: Tensor, n_data: int, eps: float = NCE_EPS) -> Tensor:
    """Eq. 18 with a per-anchor set of negatives (in-batch negatives): m_b = number of negatives of anchor b.

    Equals :func:`nce_loss` when every mask entry is true. An anchor without negatives contributes only its
    positive term.

    Args:
        pos: (B,) normalized positive scores.
        neg: (B, N) normalized candidate scores.
        neg_mask: (B, N) bool, which candidates are negatives of each anchor.
        n_data: size of the training set (noise Pn = 1/n_data).
        eps: numerical guard.

    Returns:
        Scalar loss.
    """
    mpn = neg_mask.sum(1).to(pos.dtype) * (1.0 / float(n_data))
    log_d1 = torch.log(pos / (pos + mpn + eps))
    # log(m Pn) is a constant; kept apart so that an anchor with m = 0 gives no log(0) in the graph
    log_mpn = torch.where(mpn > 0, mpn, torch.ones_like(mpn)).log()
    log_d0 = (log_mpn[:, None] - torch.log(neg + mpn[:, None] + eps)) * neg_mask
    return -(log_d1.sum() + log_d0.sum()) / pos.shape[0]


class _BankNCE(torch.autograd.Function):
    """:func:`nce_loss` of anchors scored against constant bank rows; the anchors' gradient is computed in forward.

    CRD updates its bank in place right after the loss, before backward. Computing the gradient while the bank still
    holds the scored rows spares autograd a copy of the whole bank per step (and the chain of element-wise
    backward kernels): ``dL/dd_b0 = -c / (B T (x_b0 + c))``, ``dL/dd_bk = x_bk / (B T (x_bk + c))`` for the scores
    ``d = <memory[i], anchor>``, ``x = exp(d / T) / Z`` and ``c = m Pn + eps``.
    """

    @staticmethod
    def forward(ctx, anchor, scores, memory, contrast_idx, z, temperature, n_data, eps):
        x = scores / z
        loss = nce_loss(x, n_data, eps)
        if ctx.needs_input_grad[0]:
            b, m = x.shape[0], x.shape[1] - 1
            c = m * (1.0 / float(n_data)) + eps
            g = x / ((x + c) * (b * temperature))
            g[:, 0] = -c / ((x[:, 0] + c) * (b * temperature))
            ctx.save_for_backward(_anchor_grad(g, memory, contrast_idx))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_anchor,) = ctx.saved_tensors
        return grad_loss * grad_anchor, None, None, None, None, None, None, None


def _anchor_grad(grad_scores: Tensor, memory: Tensor, contrast_idx: Tensor) -> Tensor:
    """``sum_k grad_scores[b, k] * memory[contrast_idx[b, k]]``, the way :func:`exp_scores` scored them."""
    b, k1 = contrast_idx.shape
    if memory.shape[0] <= 8 * k1:  # exp_scores scored every row: the transposed product
        dense = grad_scores.new_zeros(b, memory.shape[0]).scatter_add_(1, contrast_idx, grad_scores)
        return dense @ memory
    rows = memory.index_select(0, contrast_idx.reshape(-1)).view(b, k1, memory.shape[1])
    return torch.bmm(grad_scores.unsqueeze(1), rows).squeeze(1)


def bank_nce_loss(
    anchor: Tensor,
    scores: Tensor,
    memory: Tensor,
    contrast_idx: Tensor,
    z: Tensor,
    temperature: float,
    n_data: int,
) -> Tensor:
    """``nce_loss(scores / z, n_data)`` with the gradient reaching ``anchor`` through ``scores``.

    Args:
        anchor: (B, D) embeddings (with grad).
        scores: (B, K+1) ``exp_scores(anchor.detach(), memory, contrast_idx, temperature)``.
        memory: (n, D) the bank the scores were computed from; it may change in place after this call.
        contrast_idx: (B, K+1) scored rows; column 0 is the positive.
        z: the normalization constant.
        temperature: the NCE temperature.
        n_data: size of the training set.

    Returns:
        Scalar loss, equal to :func:`nce_loss` of the normalized scores.
    """
    if not (torch.is_grad_enabled() and anchor.requires_grad):
        return nce_loss(scores / z, n_data)
    return _BankNCE.apply(anchor, scores, memory.detach(), contrast_idx, z, temperature, n_data, NCE_EPS)


@register_method("crd")
class CRD(DistillationMethod):
    """Contrastive representation distillation with a memory bank of other-class negatives.

    Uses the penultimate embeddings (RepDistiller ``feat[-1]``) of both networks. Each goes through a trainable
    head ``Embed`` = Linear(dim, ``feat_dim``) + L2 normalization (the teacher-side head trains although the teacher is
    frozen). Two symmetric NCE problems (Eq. 18, m = ``nce_k``, Pn = 1/n_data, eps = 1e-7):

    * student anchor ``v_s[b]`` against the teacher bank: ``x_s[b,k] = exp(<memory_t[i_bk], v_s[b]> / T) / Z_s``;
    * teacher anchor ``v_t[b]`` against the student bank: ``x_t[b,k] = exp(<memory_s[i_bk], v_t[b]> / T) / Z_t``;

    ``loss = NCE(x_s) + NCE(x_t)``. Row ``i_b0`` is the positive (the sample itself in mode "exact", a random row of
    its class in "relax"), ``i_b1..i_bK`` are rows of other classes drawn uniformly with torch's RNG (without
    replacement, or with replacement when a class has fewer than K rows of other classes — RepDistiller's
    ``CIFAR100InstanceSample``). ``Z = mean(exp-scores of the first batch) * n_data`` per side, fixed afterwards.
    After the loss, both banks move towards the batch's embeddings: ``m_i = normalize(nce_m * m_i + (1 - nce_m) * v)``.

    Defaults (RepDistiller ``train_student.py``/``crd/``, mdistiller ``CFG.CRD``): feat_dim 128, nce_k 16384,
    nce_t 0.07, nce_m 0.5, mode "exact"; weight 0.8 with CE weight 1 (``-r 1 -a 0 -b 0.8``).

    Design choices where the reference is silent:

    * The training rows come from ``StepInfo.index`` and the classes from ``DataInfo.labels`` (class lists are built
      once in :meth:`setup`), not from a special dataset; negatives are drawn on the bank's device.
    * Multi-process: the bank update gathers the rows and embeddings of every process first, so every process holds
      the same bank; Z is computed from the mean over all processes' first batches. Each process draws its own
      negatives for its own batch (processes seeded alike draw alike: harmless, each draw is still uniform).
    * A row that appears twice in one (gathered) update keeps its last occurrence.
    * The bank is updated in training mode only (an evaluation pass never moves it).
    * ``negatives="batch"`` (RepDistiller issue #40: the bank is n_data x feat_dim per side) drops the bank: the
      candidates are the other side's embeddings of the current batch, the positive is the same sample, the
      negatives are the batch's samples of other classes (m_b of them per anchor, in Eq. 18 as m), Z is fixed on the
      first batch the same way, and gradients flow through both anchors and candidates. With ``gather=True`` the
      batch is the global batch of all processes. Needs no row index and no ``DataInfo.labels``.

    Args:
        feat_dim: size of the contrastive embedding (heads' output).
        nce_k: negatives per positive ("bank" mode).
        nce_t: temperature T of the scores.
        nce_m: momentum of the bank update.
        mode: "exact" (the positive is the sample's own row) or "relax" (a random row of the same class).
        negatives: "bank" (faithful, memory bank) or "batch" (memory-light, in-batch negatives).
        gather: "batch" mode only: contrast against the global batch of all processes.
    """

    summary = "NCE contrast of student/teacher embeddings against a memory bank of other-class samples"
    paper = "Tian, Krishnan, Isola, Contrastive Representation Distillation, ICLR 2020"
    citation = (
        "@inproceedings{tian2020contrastive,\n  title={Contrastive Representation Distillation},\n"
        "  author={Tian, Yonglong and Krishnan, Dilip and Isola, Phillip},\n"
        "  booktitle={International Conference on Learning Representations},\n  year={2020}\n}"
    )
    default_weight = 0.8
    default_ce_weight = 1.0

    def __init__(
        self,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        mode: str = "exact",
        negatives: str = "bank",
        gather: bool = False,
    ) -> None:
        super().__init__()
        if int(feat_dim) < 1:
            raise ValueError(f"crd feat_dim must be >= 1, got {feat_dim}.")
        if int(nce_k) < 1:
            raise ValueError(f"crd nce_k (negatives per positive) must be >= 1, got {nce_k}.")
        if not nce_t > 0:
            raise ValueError(f"crd nce_t (temperature) must be > 0, got {nce_t}.")
        if not 0 <= nce_m < 1:
            raise ValueError(f"crd nce_m (bank momentum) must be in [0, 1), got {nce_m}.")
        if mode not in MODES:
            raise ValueError(f"crd mode must be one of {', '.join(MODES)}, got {mode!r}.")
        if negatives not in NEGATIVES:
            raise ValueError(f"crd negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}.")
        self.feat_dim = int(feat_dim)
        self.nce_k = int(nce_k)
        self.nce_t = float(nce_t)
        self.nce_m = float(nce_m)
        self.mode = mode
        self.negatives = negatives
        self.gather = bool(gather)
        # in-batch negatives are the other samples of the batch
        self.min_batch_size = 2 if negatives == "batch" else 1
        self.num_samples = 0
        # normalization constants of the student-anchor and teacher-anchor scores; -1 = not set yet
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=FeatureNeeds(embedding=True),
            teacher=FeatureNeeds(embedding=True),
            index=self.negatives == "bank",
        )

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        """Build both heads and, in "bank" mode, the memory bank (one row per training sample)."""
        if student.embedding is None or teacher.embedding is None:
            raise ValueError("crd needs the penultimate embedding of both the student and the teacher.")
        if data.num_samples <= 0:
            raise ValueError(
                "crd needs the size of the training set (DataInfo.num_samples > 0) for its noise distribution and "
                "memory bank: pass train_dataset (or data_info) to the trainer."
            )
        self.num_samples = int(data.num_samples)
        self.embed_s = Embed(math.prod(student.embedding), self.feat_dim)
        self.embed_t = Embed(math.prod(teacher.embedding), self.feat_dim)
        if self.negatives != "bank":
            return
        if data.labels is None:
            raise ValueError(
                "crd needs the label of every training row (DataInfo.labels) to draw negatives of other classes: "
                "use a training set with a label column, pass data_info=DataInfo(..., labels=...), or use "
                "--crd-negatives batch."
            )
        if data.labels.numel() != data.num_samples:
            raise ValueError(
                f"DataInfo.labels has {data.labels.numel()} entries but DataInfo.num_samples is {data.num_samples}: "
                "give one label per training row."
            )
        self.bank = ContrastMemory(data.labels, self.feat_dim, self.nce_k, self.nce_m, self.mode)

    # -- the loss ------------------------------------------------------------------------------------------------
    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        v_s = self.embed_s(student.embedding)
        # the teacher is frozen: only its head learns, whatever the caller passes in
        v_t = self.embed_t(teacher.embedding.detach())
        if self.negatives == "batch":
            return {"crd": self._batch_loss(v_s, v_t, step.labels)}
        if step.index is None:
            raise ValueError(
                "crd needs the training-row index of every sample (StepInfo.index) for its memory bank: prepare the "
                "dataset with hf_distill.data.datasets.prepare_split (it adds an 'index' column) or use --crd-negatives batch."
            )
        index = step.index.to(device=v_s.device, dtype=torch.long).reshape(-1)
        self.bank.check(index, step.labels)
        contrast = self.bank.sample(index)
        # scores without a graph: bank_nce_loss gives the anchors their gradient before the bank moves
        out_s = exp_scores(v_s.detach(), self.bank.memory_t, contrast, self.nce_t)
        out_t = exp_scores(v_t.detach(), self.bank.memory_s, contrast, self.nce_t)
        self._set_z(out_s, out_t)
        loss = bank_nce_loss(
            v_s, out_s, self.bank.memory_t, contrast, self.z_s, self.nce_t, self.num_samples
        ) + bank_nce_loss(v_t, out_t, self.bank.memory_s, contrast, self.z_t, self.nce_t, self.num_samples)
        if self.training:
            self.bank.update(index, v_s.detach(), v_t.detach())
        return {"crd": loss}

    def _batch_loss(self, v_s: Tensor, v_t: Tensor, labels: Tensor) -> Tensor:
        if self.gather:
            v_s, v_t = gather_with_grad(v_s), gather_with_grad(v_t)
            labels = gather_no_grad(labels)
        dots = v_s @ v_t.t()  # [b, j] = <v_s[b], v_t[j]>
        out_s = torch.exp(dots / self.nce_t)  # student anchors, teacher candidates
        out_t = torch.exp(dots.t() / self.nce_t)  # teacher anchors, student candidates
        neg_mask = labels[:, None] != labels[None, :]
        valid = neg_mask | torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        self._set_z(out_s, out_t, valid)
        loss = 0.0
        for out, z in ((out_s, self.z_s), (out_t, self.z_t)):
            x = out / z
            loss = loss + masked_nce_loss(x.diagonal(), x, neg_mask, self.num_samples)
        return loss

    @torch.no_grad()
    def _set_z(self, out_s: Tensor, out_t: Tensor, valid: Tensor | None = None) -> None:
        """Fix Z = mean(scores) * n_data on the first batch (over every process's batch), RepDistiller's way."""
        if not bool((self.z_s < 0) | (self.z_t < 0)):
            return
        for out, z in ((out_s, self.z_s), (out_t, self.z_t)):
            if bool(z < 0):
                z.fill_(_global_mean(out, valid) * self.num_samples)


def _global_mean(x: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean of ``x`` (over ``valid`` entries) across every process; the plain local mean in a single process."""
    x = x.detach()
    if world_size() == 1:
        return x.mean() if valid is None else x[valid].mean()
    vals = x.double() if valid is None else x[valid].double()
    stats = gather_no_grad(
        torch.stack([vals.sum(), torch.tensor(float(vals.numel()), device=x.device)])[None]
    )
    return (stats[:, 0].sum() / stats[:, 1].sum()).to(x.dtype)


register_preset(
    "crd_kd",
    Preset(
        methods=(("crd", 0.8), ("kd", 1.0)),
        ce_weight=1.0,
        description="CRD + KD as in RepDistiller's CRD+KD runs (-r 1 -a 1 -b 0.8)",
    ),
)
