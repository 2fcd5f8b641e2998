#!/usr/bin/env python
"""KDSVD's step against a reference implementation's, side by side in one process.

    python benchmarks/kdsvd_reference.py --threads 1                 # timm resnet18 -> mobilenetv3_small, batch 64
    python benchmarks/kdsvd_reference.py --pair resnet56-resnet20 --steps 10 --out /tmp/kdsvd_reference.json

The reference is written here from the paper (Lee et al., ECCV 2018) the way RepDistiller organizes it: per paired
stage map, an SVD of every sample's (H*W, C) matrix (the student's with autograd through it), the leading right
singular vectors normalized (the teacher's 1, the student's 4), the student's aligned to the teacher's by the sign of
the largest |cosine|, both scaled by the teacher's normalized singular values; between consecutive stages the RBF
relation ``exp(-(v_l[c] - v_(l-1)[c'])^2 / 8)`` of both networks, the squared difference with non-finite elements
zeroed, summed and divided by the batch (the SVD's gradient zeroed where it is not finite, so that the student
keeps training). Where the student's channels differ from the teacher's (the timm pair) the
same 1x1 convolution + BatchNorm connector as ours maps them first (RepDistiller needs equal channels).

Three steps are timed in turn on the same batches: the bare loop of ``benchmarks/throughput.py`` (the limit), this
reference step, and the ``DistillationTrainer`` with ``--method kdsvd``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

from benchmarks import throughput  # noqa: E402
from hf_distill.features import FeatureNeeds  # noqa: E402


def finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def svd(fmap: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Normalized leading right singular vectors (B, C, n) and singular values (B, n) of each (H*W, C) matrix."""
    b, c = fmap.shape[:2]
    x = fmap.reshape(b, c, -1).transpose(1, 2)
    if x.requires_grad:
        # the SVD's gradient is infinite where singular values repeat (post-ReLU maps); zeroed so that the
        # reference keeps training (and its timing stays that of finite numbers)
        x.register_hook(finite)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    return F.normalize(finite(vh.transpose(1, 2))[:, :, :n], dim=1), F.normalize(finite(s)[:, :n], dim=1)


def align(v_s: Tensor, v_t: Tensor) -> Tensor:
    cos = v_s.transpose(1, 2) @ v_t
    best = cos.abs().max(1, keepdim=True).values
    return v_s @ torch.where(best == cos.abs(), torch.sign(cos), torch.zeros_like(cos))


def rbf(deep: Tensor, shallow: Tensor) -> Tensor:
    return torch.exp(-(deep.unsqueeze(2) - shallow.unsqueeze(1)).pow(2) / 8)


class ReferenceKDSVD(nn.Module):
    def __init__(self, s_maps: list[Tensor], t_maps: list[Tensor]) -> None:
        super().__init__()
        self.connectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False), nn.BatchNorm2d(t.shape[1]))
            if s.shape[1] != t.shape[1]
            else nn.Identity()
            for s, t in zip(s_maps, t_maps)
        )

    def forward(self, s, t, batch) -> Tensor:
        losses, prev = [], None
        for conv, f_s, f_t in zip(self.connectors, s.maps.values(), t.maps.values()):
            v_t, s_t = svd(f_t, 1)
            v_s, _ = svd(conv(f_s), 4)
            v_s = align(v_s, v_t)
            v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
            if prev is not None:
                gap = (rbf(v_s, prev[0]) - rbf(v_t, prev[1]).detach()).pow(2)
                losses.append(finite(gap).sum() / f_s.shape[0])
            prev = (v_s, v_t)
        return sum(losses)


def reference(limit: throughput.Limit, args) -> throughput.ReferenceStep:
    needs = FeatureNeeds(maps=("stages",))
    build = lambda s, t: ReferenceKDSVD(list(s.maps.values()), list(t.maps.values()))  # noqa: E731
    return throughput.ReferenceStep(limit, needs, needs, build)


def main(argv: list[str] | None = None) -> dict:
    return throughput.reference_main("kdsvd", reference, __doc__, argv)


if __name__ == "__main__":
    main()
