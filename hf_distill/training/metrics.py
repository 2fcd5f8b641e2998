"""Classification metrics used by the trainer (top-1 and top-5 accuracy)."""

from __future__ import annotations

import numpy as np
from transformers import EvalPrediction


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the k highest logits (ties broken by index order)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def classification_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """``compute_metrics`` for ``Trainer``: accuracy and (with at least 6 classes) top-5 accuracy."""
    logits = eval_pred.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    labels = eval_pred.label_ids
    out = {"accuracy": topk_accuracy(logits, labels, 1)}
    if logits.shape[1] > 5:
        out["top5_accuracy"] = topk_accuracy(logits, labels, 5)
    return out
