"""Top-k (default top-5) accuracy as an ``evaluate`` metric script, shipped with hf_distill (loads offline).

    import evaluate
    top5 = evaluate.load("metrics/top5_accuracy")         # path of this folder
    top5.compute(predictions=logits.tolist(), references=labels.tolist())   # {'top5_accuracy': ...}

Unlike top-1 accuracy it needs the class scores (logits or probabilities), one list per sample: a sample counts as
correct when its reference class is among the ``k`` highest scores. Ties are broken by class index, lowest first,
the same rule as ``hf_distill.training.metrics.topk_accuracy`` uses during training.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Top-k accuracy: the fraction of samples whose reference class is among the k classes with the highest scores
(k = 5 by default). With k larger than the number of classes every sample counts as correct.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of float): class scores (logits or probabilities), one list per sample.
    references (list of int): true class ids, one per sample.
    k (int): how many of the highest-scoring classes count (default 5).

Returns:
    top{k}_accuracy (float): the fraction of samples whose class is in the top k; NaN for zero samples.

Examples:
    >>> top5 = evaluate.load("metrics/top5_accuracy")
    >>> top5.compute(predictions=[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]], references=[0])
    {'top5_accuracy': 0.0}
"""

_CITATION = """\
@misc{hf_distill_topk_accuracy,
  title = {Top-k accuracy metric of hf_distill},
  note = {Part of the hf_distill knowledge-distillation library}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Top5Accuracy(evaluate.Metric):
    """Top-k accuracy of class-score predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions: list[list[float]], references: list[int], k: int = 5) -> dict[str, float]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores = np.asarray(predictions, dtype=np.float64)
        ref = np.asarray(references, dtype=np.int64)
        key = f"top{k}_accuracy"
        if len(ref) == 0:
            return {key: float("nan")}
        if scores.ndim != 2 or scores.shape[0] != len(ref):
            raise ValueError(
                f"predictions must be (num_samples, num_classes) scores, got shape {scores.shape} for "
                f"{len(ref)} references"
            )
        kk = min(k, scores.shape[1])
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        return {key: float((top == ref[:, None]).any(axis=1).mean())}
