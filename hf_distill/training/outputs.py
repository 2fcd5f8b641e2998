"""What a run leaves in its output folder, named in one place, and the hook through which other layers add to it.

The library core (trainer, models, losses, data) writes the student and these files; the Hub layer
(:mod:`hf_distill.hub`) adds the model card, the processor, plots and Eval Results, and pushes. The core never
imports the Hub layer: the Hub layer subclasses :class:`ExportCallback`, and the package's ``__init__`` registers
a factory of it as a default callback of every ``DistillationTrainer`` (see :data:`DEFAULT_EXPORT_CALLBACKS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

#: the JSON twin of ``training_args.bin`` (the card reads it; a model folder's pickle is never unpickled)
TRAINING_ARGS_JSON = "training_args.json"
#: the transformers example scripts' result files (``Trainer.save_metrics``): train, eval, and both merged
ALL_RESULTS = "all_results.json"
TRAIN_RESULTS = "train_results.json"
EVAL_RESULTS = "eval_results.json"
#: older runs wrote their results here; readers fall back to it
LEGACY_RESULTS = "distill_results.json"


class ExportCallback(TrainerCallback):
    """A ``TrainerCallback`` with three more events, sent by ``DistillationTrainer``:

    * :meth:`on_export`: ``save_model`` has written the student (a final save, not a checkpoint) to ``output_dir``;
    * :meth:`on_model_card`: ``create_model_card`` (``Trainer.push_to_hub`` calls it before uploading);
    * :meth:`on_push`: ``push_to_hub``; the first callback that returns something other than None does the upload.
    """

    def on_export(self, trainer: Any, output_dir: str, **kwargs: Any) -> None:
        """The student was saved to ``output_dir``; ``kwargs`` are summary fields (e.g. a baseline's accuracy)."""

    def on_model_card(self, trainer: Any, **kwargs: Any) -> None:
        """Write the model card (``Trainer.create_model_card``'s arguments)."""

    def on_push(self, trainer: Any, **kwargs: Any) -> Any:
        """Upload the output folder (``Trainer.push_to_hub``'s arguments); None leaves it to the next one."""
        return None


#: factories of the callbacks every DistillationTrainer attaches (filled by ``hf_distill/__init__.py``)
DEFAULT_EXPORT_CALLBACKS: list[Callable[[], ExportCallback]] = []


__all__ = [
    "ALL_RESULTS",
    "DEFAULT_EXPORT_CALLBACKS",
    "EVAL_RESULTS",
    "ExportCallback",
    "LEGACY_RESULTS",
    "TRAIN_RESULTS",
    "TRAINING_ARGS_JSON",
]
