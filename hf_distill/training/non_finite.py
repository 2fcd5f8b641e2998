"""Stop a diverged run: a NaN or infinite loss term, gradient or weight ends training with one line.

The Trainer itself only filters non-finite losses out of its logged average, so a diverged run used to finish with
exit status 0 and save NaN weights (and infinite BatchNorm statistics) with a model card. Here the loss terms are
checked every step, the gradients before every optimizer step, and the whole state before every save; nothing
non-finite is written, so the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from transformers import TrainerCallback, TrainingArguments

from ..methods.objective import NonFiniteLossError, short_batch_error  # noqa: F401  (raised here too; public)


def _advice(args: TrainingArguments) -> str:
    return (
        f"Lower --learning_rate (now {args.learning_rate:g}) or check the data; the last checkpoint in "
        f"{args.output_dir}, if any, is from before it."
    )


def non_finite_terms(terms: Mapping[str, Tensor | float]) -> list[str]:
    """Names of the loss terms that are NaN or infinite."""
    return [k for k, v in terms.items() if not math.isfinite(float(v))]


def non_finite_tensors(state: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_terms(
    terms: Mapping[str, float], step: int, args: TrainingArguments, stage: str = "training"
) -> None:
    """Raise :class:`NonFiniteLossError` naming the (1-based) step and the loss terms that are not finite."""
    bad = non_finite_terms(terms)
    if bad:
        values = ", ".join(f"{k}={terms[k]}" for k in bad)
        raise NonFiniteLossError(
            f"{stage.capitalize()} stopped at step {step}: the loss is not finite ({values}). {_advice(args)}"
        )


def check_state(
    module: nn.Module, step: int, args: TrainingArguments, what: str = "Not saving", losses: str = ""
) -> None:
    """Raise :class:`NonFiniteLossError` if a parameter or buffer of ``module`` is NaN or infinite.

    A loss can stay finite (1e20) while BatchNorm's running variance has already overflowed, so the weights and
    buffers are checked at every training log and before every save.

    Args:
        what: how the message starts ("Not saving", "Training stopped").
        losses: the last logged losses, shown in the message.
    """
    bad = non_finite_tensors(module.state_dict())
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        last = f" (last losses: {losses})" if losses else ""
        raise NonFiniteLossError(
            f"{what} at step {step}: {len(bad)} weight(s) or buffer(s) hold NaN or infinite values ({shown})"
            f"{last}. {_advice(args)}"
        )


class StopOnNonFiniteGradient(TrainerCallback):
    """Before each optimizer step, stop on a NaN or infinite gradient (a finite loss can still overflow in the
    backward pass). Skipped under fp16, whose loss scaler skips such steps by design."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if args.fp16:
            return
        grads = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack(grads)).all()):
            raise NonFiniteLossError(
                f"Training stopped at step {state.global_step + 1}: the gradient norm is not finite. {_advice(args)}"
            )


__all__ = [
    "NonFiniteLossError",
    "StopOnNonFiniteGradient",
    "check_state",
    "check_terms",
    "non_finite_tensors",
    "non_finite_terms",
    "short_batch_error",
]
