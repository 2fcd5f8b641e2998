"""CRD's memory bank and its class-aware negative sampler.

The bank keeps one L2-normalized embedding per training row and per side (student, teacher). CRD scores each
anchor against its own row (the positive) and ``nce_k`` rows of other classes (the negatives), then moves the rows
of the batch towards the new embeddings with momentum. Everything here follows RepDistiller's ``crd/memory.py``
(``ContrastMemory``) and ``dataset/cifar100.py`` (``CIFAR100InstanceSample``), re-expressed with torch's RNG so that
the trainer's RNG checkpointing makes a resumed run draw the same negatives.

Multi-process runs: :meth:`ContrastMemory.update` gathers the rows and embeddings of every process before the
update, so every process applies the same update in the same order and holds the same bank. Negatives are drawn per
process (each process's loss only reads its own batch).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .distributed import gather_no_grad, gather_with_offset

MODES = ("exact", "relax")


def sample_contrast_indices(
    index: Tensor,
    row_labels: Tensor,
    class_rows: Tensor,
    class_start: Tensor,
    nce_k: int,
    mode: str = "exact",
    plan: tuple[bool, bool] | None = None,
) -> Tensor:
    """Draw the positive and ``nce_k`` negatives of every sample of a batch.

    Negatives are rows of other classes, drawn uniformly without replacement when the sample's class leaves at
    least ``nce_k`` other rows, else with replacement (RepDistiller: ``np.random.choice(cls_negative[target], k,
    replace=k > len(cls_negative[target]))``). All draws use torch's default generator on ``index.device``.

    Args:
        index: (B,) training-row index of every sample.
        row_labels: (n,) class of every training row.
        class_rows: (n,) the row indices sorted by class (stable), so class ``c`` occupies
            ``class_rows[class_start[c]:class_start[c + 1]]``.
        class_start: (C + 1,) start of every class in ``class_rows``.
        nce_k: number of negatives per sample.
        mode: ``"exact"``: the positive is the sample's own row; ``"relax"``: a random row of the same class.
        plan: :func:`sampling_plan` of the class sizes (computed once by the bank; None: computed here).

    Returns:
        (B, nce_k + 1) long tensor of row indices; column 0 is the positive.
    """
    n = class_rows.numel()
    without_replacement, with_replacement = plan or sampling_plan(class_start, nce_k)
    cls = row_labels[index]
    start = class_start[cls]
    count = class_start[cls + 1] - start
    others = n - count  # rows of other classes, per sample
    b = index.numel()
    dev = index.device
    if mode == "exact":
        positive = index
    else:
        # uniform over the class's rows (the sample itself included, as np.random.choice(cls_positive[target]))
        pick = torch.randint(0, 2**62, (b,), device=dev) % count
        positive = class_rows[start + pick]
    out = torch.empty(b, nce_k + 1, dtype=torch.long, device=dev)
    out[:, 0] = positive
    if without_replacement:
        # K distinct positions among the sample's `others` rows: a uniform random permutation's prefix, as numpy's
        # choice without replacement. One randperm per sample costs O(others); ranking B x max_others uniform keys
        # (topk) drew the same distribution at 2-3x the time on a CPU. Each sample's draw is mapped to its rows
        # and written in place while it is in the cache (one pass per sample instead of four over the whole
        # (B, K) table). Samples with fewer than K others get their draws with replacement below.
        for i, (m, s, c) in enumerate(torch.stack([others, start, count], 1).tolist()):
            if m >= nce_k:
                slots = torch.randperm(m, device=dev)[:nce_k]
                # position among the other-class rows -> position in the class-sorted order, over the own class
                torch.index_select(class_rows, 0, slots.add_(slots >= s, alpha=c), out=out[i, 1:])
    if with_replacement:
        # integer draws: exact for any row count (a float draw scaled by the count can round up to it)
        repl = torch.randint(0, 2**62, (b, nce_k), device=dev) % others[:, None]
        short = others < nce_k
        repl = repl[short]
        repl += (repl >= start[short, None]) * count[short, None]
        out[short, 1:] = class_rows[repl]
    return out


def sampling_plan(class_start: Tensor, nce_k: int) -> tuple[bool, bool]:
    """How negatives are drawn for a set of class sizes (one host sync; the bank computes it once).

    Args:
        class_start: (C + 1,) class boundaries in the class-sorted row order.
        nce_k: negatives per sample.

    Returns:
        (whether some class draws without replacement, whether some class draws with replacement). Fixed per
        training set: the host sync that finds them is paid once, not every step.
    """
    counts = (class_start[1:] - class_start[:-1]).cpu()
    others = int(class_start[-1]) - counts[counts > 0]
    return bool((others >= nce_k).any()), bool((others < nce_k).any())


def exp_scores(
    anchor: Tensor,
    memory: Tensor,
    contrast_idx: Tensor,
    temperature: float,
    score_all_rows: bool | None = None,
) -> Tensor:
    """``exp(<memory[contrast_idx[b, k]], anchor[b]> / T)`` for every sample and contrast row.

    The memory rows are constants (no gradient). Two equivalent ways: gather the (B, K+1, D) rows and batch-multiply
    (RepDistiller's way), or score the anchors against every row of the bank and pick the needed scores. The second
    moves far less memory (the bank instead of B*(K+1) gathered rows) and costs n/(K+1) times the multiply-adds, so
    it is taken while the bank has at most 8*(K+1) rows (CIFAR: 50000 rows, K+1 = 16385).

    Args:
        anchor: (B, D) embeddings.
        memory: (n, D) bank of the other side.
        contrast_idx: (B, K+1) rows to score against.
        temperature: the NCE temperature.
        score_all_rows: force one way (None: by the rule above).

    Returns:
        (B, K+1) positive scores, not normalized.
    """
    memory = memory.detach()
    b, k1 = contrast_idx.shape
    if score_all_rows is None:
        score_all_rows = memory.shape[0] <= 8 * k1
    if score_all_rows:
        if anchor.requires_grad:
            # backward needs the bank as it is now, and the bank is updated in place before backward
            memory = memory.clone()
        dots = (anchor @ memory.t()).gather(1, contrast_idx)
    else:
        rows = memory.index_select(0, contrast_idx.reshape(-1)).view(b, k1, memory.shape[1])
        dots = torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)
    if not dots.requires_grad:  # the same values, without two (B, K+1) temporaries
        return dots.div_(temperature).exp_()
    return torch.exp(dots / temperature)


@torch.no_grad()
def momentum_update_(memory: Tensor, index: Tensor, values: Tensor, momentum: float) -> None:
    """In place: ``memory[i] = normalize(momentum * memory[i] + (1 - momentum) * value)`` for the given rows.

    A row that appears several times (padding of a distributed sampler) takes its last occurrence, so the result
    does not depend on the order the kernel writes duplicates in.

    Args:
        memory: (n, D) bank.
        index: (B,) rows to update.
        values: (B, D) new embeddings.
        momentum: weight of the old row.
    """
    index, values = _last_occurrence(index, values)
    rows = memory.index_select(0, index)
    rows.mul_(momentum)
    rows.add_(values.to(rows.dtype) * (1 - momentum))
    norm = rows.pow(2).sum(1, keepdim=True).pow(0.5)
    memory.index_copy_(0, index, rows.div(norm))


def _last_occurrence(index: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    uniq, inverse = torch.unique(index, return_inverse=True)
    if uniq.numel() == index.numel():
        return index, values
    pos = torch.arange(index.numel(), device=index.device)
    last = torch.full_like(uniq, -1).scatter_reduce_(0, inverse, pos, reduce="amax")
    return index[last], values[last]


class ContrastMemory(nn.Module):
    """Student- and teacher-side embedding banks (one row per training sample) plus the negative sampler.

    Buffers (checkpointed): ``memory_s`` (student embeddings, RepDistiller ``memory_v1``) and ``memory_t`` (teacher
    embeddings, ``memory_v2``), both (n, feat_dim), initialized uniform(-stdv, stdv) with stdv = 1/sqrt(feat_dim/3).
    Non-persistent buffers derived from the labels: ``row_labels``, ``class_rows``, ``class_start``.

    Args:
        labels: (n,) class of every training row.
        feat_dim: embedding size.
        nce_k: negatives per sample.
        momentum: weight of the old row in the update.
        mode: ``"exact"`` or ``"relax"`` (see :func:`sample_contrast_indices`).

    Raises:
        ValueError: no labels, or every row has the same class (no negatives exist).
    """

    def __init__(self, labels: Tensor, feat_dim: int, nce_k: int, momentum: float, mode: str = "exact"):
        super().__init__()
        labels = torch.as_tensor(labels).long().flatten().cpu()
        n = labels.numel()
        if n == 0:
            raise ValueError("The CRD memory bank needs a non-empty training set.")
        if labels.min() < 0:
            raise ValueError(
                f"Training labels must be >= 0 for CRD's class-aware negatives, found {labels.min()}."
            )
        self.nce_k = int(nce_k)
        self.momentum = float(momentum)
        self.mode = mode
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n, feat_dim).mul_(2 * stdv).add_(-stdv))
        counts = torch.bincount(labels)
        start = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.register_buffer("row_labels", labels, persistent=False)
        self.register_buffer("class_rows", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("class_start", start, persistent=False)
        if int((counts > 0).sum()) < 2:
            raise ValueError(
                "Every training row has the same class, so CRD finds no negatives of other classes: train on a "
                "set with at least two classes, or use --crd-negatives batch."
            )
        self.plan = sampling_plan(start, self.nce_k)

    @property
    def num_rows(self) -> int:
        return self.memory_s.shape[0]

    def check(self, index: Tensor, labels: Tensor | None = None) -> None:
        """Raise a clear error when the batch does not belong to the training set the bank was built for.

        Args:
            index: (B,) training-row indices.
            labels: (B,) the batch's labels (compared with the labels the bank was built with).
        """
        n = self.num_rows
        bad = (index < 0) | (index >= n)
        flag = bad.any()
        mismatch = None
        if labels is not None and labels.dim() == 1 and not labels.is_floating_point():
            mismatch = self.row_labels[index.clamp(0, n - 1)] != labels.to(index.device)
            flag = flag | mismatch.any()
        if not bool(flag):  # one host sync for both checks
            return
        if bool(bad.any()):
            m = int(index[bad][0])
            raise ValueError(
                f"The memory bank has {n} rows but the batch has row index {m}: the training set changed since the "
                "bank was built (DataInfo.num_samples); train or resume with the same training set (same "
                "--max_train_samples), or start a new run."
            )
        i = int(mismatch.nonzero()[0, 0])
        raise ValueError(
            f"Training row {int(index[i])} has label {int(labels[i])} in the batch but label "
            f"{int(self.row_labels[index[i]])} in DataInfo.labels, from which the memory bank's class lists were "
            "built: train or resume with the same training set and the same DataInfo."
        )

    def sample(self, index: Tensor) -> Tensor:
        """(B, nce_k + 1) rows to contrast each sample with; column 0 is the positive.

        Under multi-process training every process draws for the global batch (its rows gathered in process order)
        with the RNG state all processes share, and keeps its own slice. The draws are then those a single process
        would make for the concatenated batch, so the run does not depend on how the batch is split over
        processes; the price is world_size times the (small) sampling work.
        """
        full, start = gather_with_offset(index)
        drawn = sample_contrast_indices(
            full,
            self.row_labels,
            self.class_rows,
            self.class_start,
            self.nce_k,
            self.mode,
            self.plan,
        )
        return drawn[start : start + index.numel()]

    @torch.no_grad()
    def update(self, index: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        """Momentum update of both banks at the batch's rows, with the rows of every process.

        Args:
            index: (B,) rows of this process's batch.
            v_s: (B, D) student embeddings (normalized).
            v_t: (B, D) teacher embeddings (normalized).
        """
        d = v_s.shape[1]
        # one collective for rows and both embeddings; float32 -> float64 -> float32 is exact, and row indices are
        # exact in float64 up to 2**53
        packed = torch.cat([index[:, None].to(torch.float64), v_s.double(), v_t.double()], dim=1)
        packed = gather_no_grad(packed)
        rows = packed[:, 0].long()
        momentum_update_(self.memory_s, rows, packed[:, 1 : 1 + d].to(v_s.dtype), self.momentum)
        momentum_update_(self.memory_t, rows, packed[:, 1 + d :].to(v_t.dtype), self.momentum)
