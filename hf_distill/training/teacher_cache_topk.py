"""The rows of the teacher cache's top-k mode (``TeacherCache(topk=k)``, ``--teacher_cache_topk K``; off by default):
how a row of logits is compressed, how the logits the methods receive are rebuilt from it, and which methods are
refused. A module of its own because it is arithmetic on logit tensors that needs neither the disk nor the cache's
key: :class:`~hf_distill.training.teacher_cache.TeacherCache` calls it, and ``benchmarks/teacher_cache_topk.py`` and
the tests use it alone.

The top-k mode is the one lossy mode, for logits at ImageNet size (1.28M rows x 1000 classes x 4 bytes = 5.1 GB an
epoch exact): a row keeps its k largest logits, their class indices and one *tail logit*, the log-mean-exp of the
other classes' logits (:func:`topk_compress`). The methods receive the logits :func:`topk_reconstruct` rebuilds: the
k logits in place and the tail logit for every other class, so ``softmax(reconstructed)`` is the teacher's softmax on
the top k and spreads the rest of its mass uniformly over the other classes (FKD's and ReLabel's stored soft labels).
It stores logits rather than probabilities because the reconstructed logits are then the teacher's own on the top k,
not shifted by the log-partition: methods that read logit values (logit standardization, a logit MSE) see the same
top-k numbers. Only logits are kept: methods that read the teacher's embedding or maps are refused in one line
(:func:`topk_refusal`). See ``docs/teacher_cache.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

#: a top-k row: the k largest logits (largest first), their classes, the log-mean-exp of the other classes' logits
TOPK_VALUES = "topk.values"
TOPK_INDICES = "topk.indices"
TAIL_LOGIT = "topk.tail"


def index_dtype(num_classes: int) -> torch.dtype:
    """The smallest integer type that holds a class index (int16 up to 32,768 classes: ImageNet-21k fits)."""
    return torch.int16 if num_classes <= 2**15 else torch.int32


def check_topk(topk: int | None, num_classes: int | None = None) -> None:
    """Raises:
    ValueError: ``topk`` is not a positive integer, or not below the number of classes (then the exact cache is
        what the user wants)."""
    if topk is None:
        return
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"--teacher_cache_topk must be a positive integer, got {topk!r}.")
    if num_classes is not None and topk >= num_classes:
        raise ValueError(
            f"--teacher_cache_topk {topk} keeps every one of the {num_classes} classes: use a k below "
            f"{num_classes}, or drop --teacher_cache_topk for the exact cache."
        )


def topk_compress(logits: Tensor, k: int) -> dict[str, Tensor]:
    """A (B, C) logit tensor as top-k rows: the k largest logits (largest first) in the logits' dtype, their class
    indices (:func:`index_dtype`) and the tail logit ``log(mean(exp(z_j)))`` over the other classes ``j``, computed
    in float32 and stored in the logits' dtype. The tail logit gives each other class the mean of their
    probabilities, so the mass outside the top k is kept whole and spread uniformly."""
    check_topk(k, logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)
    others = logits.float().scatter(-1, indices, float("-inf"))
    tail = torch.logsumexp(others, dim=-1) - math.log(logits.shape[-1] - k)
    return {
        TOPK_VALUES: values,
        TOPK_INDICES: indices.to(index_dtype(logits.shape[-1])),
        TAIL_LOGIT: tail.to(logits.dtype),
    }


def topk_reconstruct(values: Tensor, indices: Tensor, tail: Tensor, num_classes: int) -> Tensor:
    """The (B, num_classes) logits of top-k rows: the stored logits at their classes, the tail logit elsewhere.
    ``softmax`` of them is the teacher's softmax on the top k (the log-partition is unchanged) and
    ``(1 - top-k mass) / (num_classes - k)`` on every other class."""
    out = tail.unsqueeze(-1).expand(len(tail), num_classes).clone()
    return out.scatter_(-1, indices.long(), values.to(out.dtype))


def topk_refusal(needs_by_method: dict[str, Any]) -> str | None:
    """The one-line refusal of ``--teacher_cache_topk`` for methods that read more of the teacher than its logits
    (``needs_by_method``: method name -> its :class:`~hf_distill.features.FeatureNeeds` of the teacher), or
    ``None`` when every method reads logits alone."""
    reads = []
    for name, needs in needs_by_method.items():
        what = [
            w for w, asked in (("embedding", needs.embedding), ("feature maps", bool(needs.maps))) if asked
        ]
        if what:
            reads.append(f"{name} reads the teacher's {' and '.join(what)}")
    if not reads:
        return None
    return (
        f"--teacher_cache_topk stores the teacher's logits only, but {'; '.join(reads)}: drop "
        "--teacher_cache_topk (the exact cache stores every output) or use logit methods only (kd, dkd, dist, ...)."
    )


__all__ = [
    "TAIL_LOGIT",
    "TOPK_INDICES",
    "TOPK_VALUES",
    "check_topk",
    "index_dtype",
    "topk_compress",
    "topk_reconstruct",
    "topk_refusal",
]
