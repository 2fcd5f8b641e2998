"""The training-curve figure of a student's card: the loss and its terms per step, the eval accuracy per epoch."""

from __future__ import annotations

import math
import os
from typing import Any

from .summary import last_logged

PLOT_NAME = "training_curves.png"


def plot_training_curves(
    log_history: list[dict[str, Any]], path: str | os.PathLike, title: str | None = None
) -> bool:
    """Draw the training loss and its terms per step, and the eval accuracy per epoch, into a PNG.

    Args:
        log_history: ``trainer.state.log_history``.
        path: output PNG path.
        title: figure title.

    Returns:
        False (and nothing written) when the history has no training loss and no eval accuracy.
    """
    train = [r for r in log_history if "loss" in r and "step" in r]
    evals = [r for r in log_history if "eval_accuracy" in r]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    keys = ["loss"] + sorted({k for r in train for k in r if k.startswith("loss_")})
    for k in keys:
        pts = [(r["step"], r[k]) for r in train if k in r and r[k] is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(
                xs,
                ys,
                marker="o" if len(pts) < 30 else None,
                markersize=3,
                lw=2 if k == "loss" else 1.2,
                label="total loss" if k == "loss" else k.removeprefix("loss_") + " term",
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss and its terms (unweighted)")
    if train:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    if evals:
        xs = [r.get("epoch", r.get("step", i)) for i, r in enumerate(evals)]
        ax.plot(xs, [100 * r["eval_accuracy"] for r in evals], marker="o", label="student top-1")
        if any("eval_top5_accuracy" in r for r in evals):
            ax.plot(
                xs,
                [100 * r.get("eval_top5_accuracy", math.nan) for r in evals],
                marker=".",
                ls="--",
                label="student top-5",
            )
        t = last_logged(log_history, "eval_teacher_accuracy")
        if t is not None:
            ax.axhline(100 * t, color="gray", ls=":", label="teacher top-1")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluation during training", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title("Evaluation accuracy")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
