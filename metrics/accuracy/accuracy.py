"""Top-1 accuracy as an ``evaluate`` metric script, shipped with hf_distill so that it loads offline.

    import evaluate
    accuracy = evaluate.load("metrics/accuracy")          # path of this folder
    accuracy.compute(predictions=[0, 2, 1], references=[0, 1, 1])   # {'accuracy': 0.666...}

It takes predicted class ids (what ``evaluate.evaluator("image-classification")`` produces from a pipeline), so it
works both with the evaluator and with hf_distill's own evaluation (``recipes/evaluate.py``).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Top-1 accuracy: the fraction of samples whose predicted class id equals the reference class id,
optionally weighted per sample. Ranges from 0 to 1 (or counts, with normalize=False).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids, one per sample.
    references (list of int): true class ids, one per sample.
    normalize (bool): return the fraction (default) instead of the number of correct samples.
    sample_weight (list of float, optional): a weight per sample.

Returns:
    accuracy (float): the (weighted) fraction, or count, of correct predictions; NaN for zero samples.

Examples:
    >>> accuracy = evaluate.load("metrics/accuracy")
    >>> accuracy.compute(predictions=[1, 0, 2], references=[1, 1, 2])
    {'accuracy': 0.6666666666666666}
"""

_CITATION = """\
@misc{hf_distill_accuracy,
  title = {Top-1 accuracy metric of hf_distill},
  note = {Part of the hf_distill knowledge-distillation library}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Top-1 accuracy of class-id predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Accuracy_and_precision"],
        )

    def _compute(
        self,
        predictions: list[int],
        references: list[int],
        normalize: bool = True,
        sample_weight: list[float] | None = None,
    ) -> dict[str, float]:
        pred = np.asarray(predictions, dtype=np.int64)
        ref = np.asarray(references, dtype=np.int64)
        if pred.shape != ref.shape:
            raise ValueError(f"predictions {pred.shape} and references {ref.shape} must have the same length")
        weight = np.ones(len(ref)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        correct = float(((pred == ref) * weight).sum())
        if not normalize:
            return {"accuracy": correct}
        total = float(weight.sum())
        return {"accuracy": correct / total if total > 0 else float("nan")}
