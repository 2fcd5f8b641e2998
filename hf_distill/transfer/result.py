"""Results of a transfer run and their ``model-index`` entries in the model card."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from huggingface_hub import EvalResult
from torch import Tensor

from ..hub import EvaluationResult, update_card_file
from ..training.metrics import topk_accuracy

if TYPE_CHECKING:
    from .transfer_data import TransferData

LINEAR_PROBE = "linear probe"
FINETUNE = "fine-tune"
#: the ``task.name`` of the card's ``model-index`` entry, per protocol
TASK_NAMES = {LINEAR_PROBE: "transfer, linear probe", FINETUNE: "transfer, fine-tune"}
#: its ``task.type``: the Hub groups ``model-index`` results by (task type, dataset, config, split), so each protocol
#: needs its own type to stay an entry of its own beside the model's plain evaluation on the same split
TASK_TYPES = {LINEAR_PROBE: "transfer-linear-probe", FINETUNE: "transfer-fine-tune"}
#: top-5 accuracy is reported only above this many classes (at or below it, it is 1 by construction)
TOP5_MIN_CLASSES = 6


class TransferError(ValueError):
    """Input that a transfer run cannot use; the message says how to fix it."""


@dataclass
class TransferResult:
    """Outcome of one transfer run."""

    protocol: str
    evaluation: EvaluationResult
    num_train: int
    feature_dim: int | None
    dataset_name: str

    def eval_results(self) -> list[EvalResult]:
        """The result as ``model-index`` entries, with the protocol as the task name."""
        results = self.evaluation.as_eval_results(self.dataset_name)
        for r in results:
            r.task_type, r.task_name = TASK_TYPES[self.protocol], TASK_NAMES[self.protocol]
        return results

    def table(self) -> str:
        """A one-row Markdown table."""
        e = self.evaluation
        top5 = "–" if e.top5_accuracy is None else f"{100 * e.top5_accuracy:.2f}%"
        return (
            "| model | protocol | dataset | train | test | top-1 | top-5 |\n|---|---|---|---|---|---|---|\n"
            f"| {e.model} | {self.protocol} | {self.dataset_name} | {self.num_train} | {e.num_samples} | "
            f"{100 * e.accuracy:.2f}% | {top5} |"
        )


def evaluation_of(model_ref: str, data: TransferData, logits: Tensor, labels: Tensor) -> EvaluationResult:
    """Top-1 (and, above 5 classes, top-5) accuracy of test logits, as the evaluation record cards are built from."""
    top5 = topk_accuracy(logits.numpy(), labels.numpy(), 5) if logits.shape[1] >= TOP5_MIN_CLASSES else None
    return EvaluationResult(
        model=model_ref,
        dataset=data.dataset_id,
        split=data.test_split,
        num_samples=len(labels),
        accuracy=topk_accuracy(logits.numpy(), labels.numpy(), 1),
        top5_accuracy=top5,
        dataset_config=data.config_label,
    )


def card_path(model: str) -> str:
    """The ``README.md`` that ``--update_card`` writes: only a local model folder's card is updated.

    Raises:
        TransferError: ``model`` is not a local folder.
    """
    if not os.path.isdir(model):
        raise TransferError(
            f"--update_card writes the model card of a local model folder, and {model!r} is not one. Download or "
            "save the model to a folder first, or run without --update_card."
        )
    return os.path.join(model, "README.md")


def write_to_card(model: str, result: TransferResult) -> str:
    """Add the result to the card of a local model folder as its own ``model-index`` entry.

    Entries of other protocols, datasets or splits are kept; the same protocol on the same data is replaced.

    Returns:
        The card path.
    """
    path = card_path(model)
    update_card_file(path, result.eval_results(), model_name=os.path.basename(os.path.normpath(model)))
    return path
