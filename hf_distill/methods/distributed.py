"""Cross-process helpers for batch-level losses and shared state.

Relational losses (SP, CC, RKD, PKT, CSKD, ...) compare the samples of a batch with each other, so under DDP their
value depends on the per-process batch. With ``gather=True`` a method computes them over the global batch: every
process gathers the other processes' features (:func:`gather_with_grad` keeps the gradient path of its own
slice, so each process back-propagates its own samples' share, scaled so that DDP's gradient averaging yields the
gradient of the global-batch loss). Memory banks use :func:`gather_no_grad` so that every process applies the same
update and the bank stays identical everywhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0 (process order); no gradient. Sizes may differ."""
    n = world_size()
    if n == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(n)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s.item()) for s in sizes]
    pad = max(sizes) - x.shape[0]
    xp = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x.contiguous()
    out = [torch.empty_like(xp) for _ in range(n)]
    dist.all_gather(out, xp)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def gather_with_offset(x: Tensor) -> tuple[Tensor, int]:
    """:func:`gather_no_grad` plus where this process's rows start in the result."""
    n = world_size()
    if n == 1:
        return x, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(n)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    start = int(sum(int(s.item()) for s in sizes[: rank()]))
    return gather_no_grad(x), start


def global_batch_size(rows: int, device: torch.device | None = None) -> int:
    """The number of rows of the global batch: ``rows`` summed over every process (one all-reduce of a scalar;
    every process must call it, as every process calls a ``gather=True`` method)."""
    if world_size() == 1:
        return rows
    total = torch.tensor([rows], dtype=torch.long, device=device)
    dist.all_reduce(total)
    return int(total.item())


class _ScaleGrad(torch.autograd.Function):
    """Identity whose gradient is multiplied by the number of processes (see :func:`gather_with_grad`)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g * world_size()


def gather_with_grad(x: Tensor) -> Tensor:
    """Like :func:`gather_no_grad`, but this process's slice keeps its autograd graph.

    The result is the global batch; gradients flow only into the local slice (the other slices are constants
    here and receive their gradients on their own processes). Each process thus holds its share of the gradient of
    the global-batch loss, and the shares add up to the whole; DDP averages over processes instead of adding, so
    the local slice's gradient is multiplied by the number of processes to make DDP's average the exact gradient.
    """
    if world_size() == 1:
        return x
    full, start = gather_with_offset(x.detach())
    return torch.cat([full[:start], _ScaleGrad.apply(x), full[start + x.shape[0] :]])


def gather_pair(student: Tensor, teacher: Tensor, enabled: bool) -> tuple[Tensor, Tensor]:
    """Both tensors over the global batch (:func:`gather_with_grad`) when ``enabled``, else unchanged.

    What a relational method with a ``gather`` option does with its student and teacher features.
    """
    if not enabled:
        return student, teacher
    return gather_with_grad(student), gather_with_grad(teacher)
