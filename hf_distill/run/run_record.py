"""What makes a resumed run the same run: the defining arguments in every checkpoint, and the segments so far.

Every checkpoint gets a ``run_record.json`` (written by :class:`RunRecordCallback` right after the checkpoint):

* ``signature``: the arguments that define the run (objective with every hyperparameter, student and teacher,
  dataset and its slicing, schedule, seed, batch). Resuming with other values is refused with one line listing the
  differences (:func:`check_resume`), unless ``--resume_ignore_changes``.
* ``segments``: one entry per ``train()`` call that led to this checkpoint (steps, minutes, sum of the per-step
  training losses), so that a resumed run reports ``train_minutes`` and ``train_loss`` over the whole run
  (:func:`whole_run`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..training.checkpoints import latest_complete_checkpoint

logger = logging.getLogger(__name__)

RUN_RECORD_NAME = "run_record.json"
#: differences listed in a refusal before "and N more"
MAX_LISTED_DIFFERENCES = 6
_TRUE = ("true", "1", "yes", "latest")
_FALSE = ("false", "0", "no", "")


@dataclass
class Segment:
    """One ``train()`` call of a run, from the step it started at to the step recorded."""

    from_step: int
    to_step: int
    minutes: float
    loss_sum: float


def _identity(value: str | None) -> str | None:
    """A path as an absolute path (so that ``./x`` and ``x`` agree), anything else (a Hub id, a name) as is."""
    return os.path.abspath(value) if value and os.path.exists(value) else value


def _identities(values: list[str | None]) -> str | list[str | None] | None:
    """One entry per teacher, each as :func:`_identity`; a single teacher as a plain value (as records always had)."""
    out = [_identity(v) for v in values]
    return out[0] if len(out) == 1 else out or None


def run_signature(
    model_args, data_args, distill_args, training_args, objective: dict[str, Any]
) -> dict[str, Any]:
    """The arguments that define a run: resuming with any of them changed trains another run.

    Args:
        model_args, data_args, distill_args, training_args: the parsed arguments.
        objective: ``DistillationObjective.describe()`` (methods, weights, hyperparameters).
    """
    t = training_args
    return {
        "objective": objective,
        "student": _identity(model_args.student),
        "student_weights": _identity(model_args.student_weights),
        # an ensemble's teachers one by one, so that relative and absolute paths of the same folders agree
        "teacher": _identities(model_args.teachers()),
        "teacher_weights": _identities(model_args.teacher_weight_files()),
        "dataset": _identity(data_args.dataset),
        "train_split": data_args.train_split,
        "max_train_samples": data_args.max_train_samples,
        "validation_split_size": data_args.validation_split_size,
        "image_size": data_args.image_size,
        "train_transform": data_args.train_transform,
        "crop_pct": data_args.crop_pct,
        "max_steps": t.max_steps,
        "num_train_epochs": t.num_train_epochs,
        "seed": t.seed,
        "data_seed": t.data_seed,
        # the batch of one optimizer step over all processes: the process count may change if it stays the same
        "global_train_batch_size": t.per_device_train_batch_size
        * t.world_size
        * t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": str(getattr(t.lr_scheduler_type, "value", t.lr_scheduler_type)),
        "lr_milestones": distill_args.lr_milestones,
        "lr_decay_rate": distill_args.lr_decay_rate,
        "warmup_steps": t.warmup_steps,
        "optim": str(getattr(t.optim, "value", t.optim)),
        "optim_args": t.optim_args,
        "weight_decay": t.weight_decay,
        # a top-k teacher cache trains on other (reconstructed) logits; absent when off, so that the checkpoints
        # written before the flag existed still resume
        **(
            {"teacher_cache_topk": distill_args.teacher_cache_topk} if distill_args.teacher_cache_topk else {}
        ),
        # a smoothed cross-entropy and a scheduler's own arguments (cosine_with_min_lr's min_lr) change the run;
        # absent when unset, as above
        **({"label_smoothing_factor": t.label_smoothing_factor} if t.label_smoothing_factor else {}),
        **({"lr_scheduler_kwargs": dict(t.lr_scheduler_kwargs)} if t.lr_scheduler_kwargs else {}),
        # a stream trains on other batches than the loaded split; absent when off, as above
        **(
            {"streaming": True, "streaming_shuffle_buffer": data_args.streaming_shuffle_buffer}
            if getattr(data_args, "streaming", False)
            else {}
        ),
    }


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def signature_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"name: saved -> current"`` for every defining argument that differs (nested ones with dotted names)."""
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    methods = [sorted((s.get("objective") or {}).get("methods") or {}) for s in (saved, current)]
    out = []
    if methods[0] != methods[1]:  # another method: its hyperparameters need no listing one by one
        out.append(f"method: {','.join(methods[0])!r} -> {','.join(methods[1])!r}")
    only_one = set(methods[0]) ^ set(methods[1])
    a, b = _flatten(saved), _flatten(current)
    missing = object()
    for k in sorted(set(a) | set(b), key=lambda k: (k.startswith("objective."), k)):
        if k.startswith("objective.methods.") and k.split(".")[2] in only_one:
            continue
        if a.get(k, missing) != b.get(k, missing):
            out.append(f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}")
    return out


def read_run_record(checkpoint: str) -> dict[str, Any] | None:
    """The record of a checkpoint, or None for a checkpoint written without one."""
    path = os.path.join(checkpoint, RUN_RECORD_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def resolve_resume(value: str | bool | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint``: ``true`` (or a bare flag) is the latest ``checkpoint-N`` in ``output_dir``, as
    ``Trainer.train(resume_from_checkpoint=True)``; ``false``/empty is no resume; anything else a checkpoint folder.

    Raises:
        ValueError: no checkpoint to resume from, or a path that is not a folder.
    """
    if value is None or value is False:
        return None
    text = str(value).strip()
    if value is True or text.lower() in _TRUE:
        latest, incomplete = latest_complete_checkpoint(output_dir)
        for path in incomplete:
            logger.warning("%s is skipped: its save was interrupted (no readable trainer_state.json).", path)
        if latest is None:
            raise ValueError(
                f"--resume_from_checkpoint true: {output_dir} has no {PREFIX_CHECKPOINT_DIR}-N folder to resume "
                "from. Train without it first, or name a checkpoint folder."
            )
        return latest
    if text.lower() in _FALSE:
        return None
    if not os.path.isdir(text):
        raise ValueError(
            f"--resume_from_checkpoint {text}: no such checkpoint folder. Pass a {PREFIX_CHECKPOINT_DIR}-N folder, "
            "or true for the latest one in --output_dir."
        )
    return text


def listed_differences(diffs: list[str]) -> str:
    """The first :data:`MAX_LISTED_DIFFERENCES` of :func:`signature_differences`, ``"; "``-joined, and how many
    more there are: short enough for a one-line error."""
    more = len(diffs) - MAX_LISTED_DIFFERENCES
    return "; ".join(diffs[:MAX_LISTED_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")


def check_resume(checkpoint: str, signature: dict[str, Any], ignore_changes: bool) -> list[Segment]:
    """Refuse to resume a checkpoint of another run; return the segments recorded in it.

    Raises:
        ValueError: the checkpoint's defining arguments differ from this run's (one line listing them), unless
            ``ignore_changes``.
    """
    record = read_run_record(checkpoint)
    if record is None:
        return []
    diffs = signature_differences(record.get("signature", {}), signature)
    if diffs and not ignore_changes:
        raise ValueError(
            f"{checkpoint} was written by another run ({listed_differences(diffs)}). Resume with the same "
            "arguments, or pass --resume_ignore_changes to continue it with these."
        )
    return [Segment(**s) for s in record.get("segments", [])]


class RunRecordCallback(TrainerCallback):
    """Write ``run_record.json`` (signature and segments) into every checkpoint right after it is saved.

    Args:
        trainer: the trainer (read for the step and the loss sum).
        signature: :func:`run_signature` of this run.
        previous: the segments recorded in the checkpoint this run resumes (empty for a fresh run).
        started: ``time.time()`` when this segment began (before any initialization stage).
    """

    def __init__(self, trainer, signature: dict[str, Any], previous: list[Segment], started: float) -> None:
        self.trainer = trainer
        self.signature = signature
        self.previous = list(previous)
        self.started = started
        self.start_step = previous[-1].to_step if previous else 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = int(state.global_step)  # the resumed checkpoint's step (0 for a fresh run)

    def current(self) -> Segment:
        return Segment(
            from_step=self.start_step,
            to_step=int(self.trainer.state.global_step),
            minutes=(time.time() - self.started) / 60,
            loss_sum=self.trainer.loss_sum(),
        )

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            return
        record = {
            "signature": self.signature,
            "segments": [asdict(s) for s in [*self.previous, self.current()]],
        }
        tmp = os.path.join(folder, RUN_RECORD_NAME + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, os.path.join(folder, RUN_RECORD_NAME))


def whole_run(
    previous: list[Segment], segment_minutes: float, segment_loss: float, segment_steps: int
) -> dict:
    """``train_minutes``, ``train_loss`` and ``train_segments`` over the whole run: the segments recorded in the
    resumed checkpoint plus this one (whose ``train_loss`` is the mean over its ``segment_steps`` steps)."""
    steps = sum(s.to_step - s.from_step for s in previous) + segment_steps
    loss_sum = sum(s.loss_sum for s in previous) + segment_loss * segment_steps
    return {
        "train_minutes": round(sum(s.minutes for s in previous) + segment_minutes, 2),
        "train_loss": loss_sum / steps if steps else segment_loss,
        "train_segments": len(previous) + 1,
    }


__all__ = [
    "RUN_RECORD_NAME",
    "listed_differences",
    "RunRecordCallback",
    "Segment",
    "check_resume",
    "read_run_record",
    "resolve_resume",
    "run_signature",
    "signature_differences",
    "whole_run",
]
