#!/usr/bin/env python
"""CRD's step against a reference implementation's, side by side in one process.

    python benchmarks/crd_reference.py --threads 1                   # timm resnet18 -> mobilenetv3_small, batch 64
    python benchmarks/crd_reference.py --pair resnet56-resnet20 --steps 10 --out /tmp/crd_reference.json

The reference is written here from the paper (Tian et al., ICLR 2020) the way its released code (RepDistiller) is
organized: a linear embedding + L2 normalization per side, two memory banks of one row per training sample
(uniform(-stdv, stdv) init), 16,384 negatives per sample drawn from the other classes' rows with numpy's legacy
``choice`` without replacement (RepDistiller draws them in its dataset's ``__getitem__``), the (B, K+1, 128) bank
rows gathered and batch-multiplied with the anchors, scores ``exp(<row, anchor> / T) / Z`` with Z fixed on the first
batch, the NCE loss of Eq. 18, the momentum update of the banks before backward, and autograd through all of it.

Three steps are timed in turn on the same batches (the machine's load hits them alike): the bare loop of
``benchmarks/throughput.py`` (the limit), this reference step, and the ``DistillationTrainer`` with ``--method crd``
(its faithful mode: bank, 16,384 negatives, "exact" positives). The reference's negative sampling is part of its
step here, as ours is part of ours; RepDistiller runs it in its data-loader workers, on other cores, so
``reference_sampling_s`` (its median) is reported too: the reference's step without it is the difference.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

from benchmarks import throughput  # noqa: E402
from hf_distill.features import FeatureNeeds  # noqa: E402

EPS = 1e-7


def contrast_loss(x: Tensor, n_data: int) -> Tensor:
    """Eq. 18 on (B, K+1) normalized scores, column 0 the positive (noise Pn = 1 / n_data)."""
    m, pn = x.shape[1] - 1, 1.0 / n_data
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + m * pn + EPS))
    neg = x[:, 1:]
    log_d0 = torch.log(neg.clone().fill_(m * pn) / (neg + m * pn + EPS))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


class ReferenceCRD(nn.Module):
    def __init__(
        self, s_dim: int, t_dim: int, labels: Tensor, feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5
    ):
        super().__init__()
        self.embed_s, self.embed_t = nn.Linear(s_dim, feat_dim), nn.Linear(t_dim, feat_dim)
        n = labels.numel()
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n, feat_dim).mul_(2 * stdv).add_(-stdv))
        y = labels.numpy()
        self.labels = y
        self.negatives = [np.flatnonzero(y != c) for c in range(int(y.max()) + 1)]
        self.k, self.t, self.momentum, self.n = nce_k, nce_t, nce_m, n
        self.z_s = self.z_t = None
        self.rng = np.random.RandomState(0)
        self.sampling_times: list[float] = []

    def sample(self, index: Tensor) -> Tensor:
        t = time.perf_counter()
        rows = []
        for i in index.tolist():
            negatives = self.negatives[self.labels[i]]
            drawn = self.rng.choice(negatives, self.k, replace=self.k > len(negatives))
            rows.append(np.hstack(([i], drawn)))
        idx = torch.from_numpy(np.stack(rows))
        self.sampling_times.append(time.perf_counter() - t)
        return idx

    def scores(self, memory: Tensor, idx: Tensor, anchor: Tensor) -> Tensor:
        b, d = anchor.shape
        rows = torch.index_select(memory, 0, idx.view(-1)).detach().view(b, self.k + 1, d)
        return torch.exp(torch.bmm(rows, anchor.view(b, d, 1)).squeeze(2) / self.t)

    @torch.no_grad()
    def update(self, memory: Tensor, index: Tensor, v: Tensor) -> None:
        rows = torch.index_select(memory, 0, index).mul_(self.momentum).add_(v * (1 - self.momentum))
        memory.index_copy_(0, index, rows.div(rows.pow(2).sum(1, keepdim=True).pow(0.5)))

    def forward(self, s, t, batch) -> Tensor:
        index = batch["index"]
        idx = self.sample(index)
        v_s = F.normalize(self.embed_s(s.embedding), dim=1)
        v_t = F.normalize(self.embed_t(t.embedding), dim=1)
        out_s = self.scores(self.memory_t, idx, v_s)  # student anchors, teacher bank
        out_t = self.scores(self.memory_s, idx, v_t)
        if self.z_s is None:
            self.z_s, self.z_t = (out_s.mean() * self.n).item(), (out_t.mean() * self.n).item()
        out_s, out_t = out_s / self.z_s, out_t / self.z_t
        self.update(self.memory_s, index, v_s.detach())
        self.update(self.memory_t, index, v_t.detach())
        return 0.8 * (contrast_loss(out_s, self.n) + contrast_loss(out_t, self.n))


def reference(limit: throughput.Limit, args) -> throughput.ReferenceStep:
    labels = throughput.SyntheticRows(args.rows).labels  # the trainer's training rows (the same seed)

    def build(s, t) -> ReferenceCRD:
        reference.module = ReferenceCRD(s.embedding.shape[1], t.embedding.shape[1], labels)
        return reference.module

    needs = FeatureNeeds(embedding=True)
    return throughput.ReferenceStep(limit, needs, needs, build)


def sampling(args) -> dict:
    """The median time of the reference's negative sampling per step (part of its step above)."""
    times = reference.module.sampling_times[args.warmup :]
    return {"reference_sampling_s": round(statistics.median(times), 4)}


def main(argv: list[str] | None = None) -> dict:
    return throughput.reference_main("crd", reference, __doc__, argv, extra=sampling)


if __name__ == "__main__":
    main()
