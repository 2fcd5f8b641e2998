"""Step-decay learning-rate schedule of the CIFAR distillation benchmarks (x0.1 at epochs 150/180/210 of 240).

transformers has no multi-step schedule; :class:`~hf_distill.training.trainer.DistillationTrainer` builds this one when
``lr_milestones`` is set.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR


def multistep_factor(
    milestone_steps: Sequence[int], rate: float, warmup_steps: int = 0
) -> Callable[[int], float]:
    """Return ``step -> lr factor``: linear warm-up, then ``rate ** (milestones passed)``."""
    ms = sorted(int(m) for m in milestone_steps)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return rate ** bisect.bisect_right(ms, step)

    return factor


def multistep_scheduler(
    optimizer: torch.optim.Optimizer,
    milestone_epochs: Sequence[float],
    steps_per_epoch: int,
    rate: float = 0.1,
    warmup_steps: int = 0,
) -> LambdaLR:
    """A ``LambdaLR`` that decays by ``rate`` at each milestone epoch (converted to optimizer steps)."""
    steps = [math.ceil(e * steps_per_epoch) for e in milestone_epochs]
    return LambdaLR(optimizer, multistep_factor(steps, rate, warmup_steps))
