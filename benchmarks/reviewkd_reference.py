#!/usr/bin/env python
"""ReviewKD's step against a reference implementation's, side by side in one process.

    python benchmarks/reviewkd_reference.py                                # resnet32x4 -> resnet8x4, batch 64
    python benchmarks/reviewkd_reference.py --pair resnet56-resnet20 --steps 10 --out /tmp/reviewkd_reference.json

The reference is written here from the paper (Chen et al., CVPR 2021) the way its released code is organized (a
distiller whose networks return their features from the forward): attention-based fusion (ABF: 1x1 conv + BN to the
fusion width; with a deeper residual resized by nearest interpolation, two sigmoid attention maps from a 1x1 conv
of the concatenation weigh the level and the residual; 3x3 conv + BN to the teacher's channels) from the deepest
level to the shallowest, and the hierarchical context loss (MSE at full size and after average pooling to 4, 2 and 1,
weights 1, 1/2, 1/4, 1/8, normalized), plus cross-entropy, backward and an SGD step over the student and the fusion
modules. Features come from the models' own ``forward_taps`` (the reference's models return them from the forward).

Three steps are timed in turn on the same batches (the machine's load hits them alike): the bare loop of
``benchmarks/throughput.py`` (the limit), this reference step, and the ``DistillationTrainer`` with ``--method
reviewkd``; reported: the median of each and the ratios trainer / reference and reference / limit.
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


class Fusion(nn.Module):
    """One attention-based fusion module of the reference."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            weights = self.att(torch.cat([x, residual], 1))
            x = x * weights[:, 0:1] + residual * weights[:, 1:2]
        if tuple(x.shape[-2:]) != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def context_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """The hierarchical context loss of the reference."""
    total = 0.0
    for s, t in zip(student, teacher):
        loss, weight, norm = F.mse_loss(s, t), 1.0, 1.0
        for size in (4, 2, 1):
            if size < s.shape[-1]:
                weight /= 2
                loss = loss + weight * F.mse_loss(
                    F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
                )
                norm += weight
        total = total + loss / norm
    return total


def levels(maps: dict[str, Tensor], embedding: Tensor) -> list[Tensor]:
    """The stage maps (the stem left out) and the pooled embedding as a 1x1 map, shallow to deep."""
    return [v for k, v in maps.items() if k != "stem"] + [embedding[:, :, None, None]]


class ReviewKDReference:
    """The reference's training step beside a limit's networks: its own copy of the student and its fusion modules."""

    def __init__(self, limit: throughput.Limit) -> None:
        device = next(limit.student.parameters()).device
        self.teacher, self.adapter = limit.teacher, limit.adapter
        self.ref_student = type(limit.student)(limit.student.config).to(device).train()
        self.ref_student.load_state_dict(limit.student.state_dict())
        x = torch.zeros(2, 3, 32, 32, device=device)
        s_levels, t_levels = self.features(x)
        mid = min(512, s_levels[-1].shape[1])
        self.fusions = nn.ModuleList(
            Fusion(s.shape[1], mid, t.shape[1], fuse=i < len(s_levels) - 1)
            for i, (s, t) in enumerate(zip(s_levels, t_levels))
        ).to(device)
        self.out_sizes = [tuple(t.shape[-2:]) for t in t_levels]
        params = [*self.ref_student.parameters(), *self.fusions.parameters()]
        self.ref_opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)

    def features(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        maps, embedding, _ = self.ref_student.forward_taps(x)
        with torch.no_grad():
            t_maps, t_embedding, _ = self.teacher.forward_taps(self.adapter(x), preact=True)
        return levels(maps, embedding), levels(t_maps, t_embedding)

    def __call__(self, batch: dict[str, Tensor]) -> None:
        x, y = batch["pixel_values"], batch["labels"]
        maps, embedding, logits = self.ref_student.forward_taps(x)
        with torch.no_grad():
            t_maps, t_embedding, _ = self.teacher.forward_taps(self.adapter(x), preact=True)
        s_levels, fused, residual = levels(maps, embedding), [], None
        for i in range(len(s_levels) - 1, -1, -1):
            out, residual = self.fusions[i](s_levels[i], residual, self.out_sizes[i])
            fused.insert(0, out)
        loss = F.cross_entropy(logits, y) + context_loss(fused, levels(t_maps, t_embedding))
        loss.backward()
        self.ref_opt.step()
        self.ref_opt.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if (
        "--pair" not in argv
    ):  # ReviewKD reads pre-activation maps: a CIFAR-zoo pair (the timm student has none)
        argv += ["--pair", "resnet32x4-resnet8x4"]
    return throughput.reference_main("reviewkd", lambda limit, args: ReviewKDReference(limit), __doc__, argv)


if __name__ == "__main__":
    main()
