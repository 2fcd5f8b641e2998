"""Checkpoints and the exported student: what is written where, and how a folder is recognised as complete.

* A checkpoint (``checkpoint-N``) is upstream's: ``Trainer._save_checkpoint`` writes the trained container (student
  and every method's parameters and buffers, ``model.safetensors``), the optimizer, scheduler, RNG states and
  ``trainer_state.json`` — the last file written, so a checkpoint whose ``trainer_state.json`` reads is complete
  (:func:`is_complete_checkpoint`); upstream's ``_load_from_checkpoint`` reads it back.
* The export (``save_model()``, the output folder) holds the student alone in Hub format, written by
  :func:`write_student_folder` into a scratch folder and moved in with ``config.json`` last: a folder whose config
  is missing or does not parse was interrupted (:func:`saved_model_problem`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn
from transformers import PreTrainedModel, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from .outputs import TRAINING_ARGS_JSON

TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_ARGS_NAME = "training_args.bin"
#: the scratch folder of an export (its leading underscore keeps it out of every upload)
EXPORT_SCRATCH = "_export.tmp"
#: the file an older hf_distill wrote beside the student in its checkpoints
OLD_STATE_NAME = "distill_state.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed by this run; the message says why and what to do."""


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def is_complete_checkpoint(folder: str) -> bool:
    """Whether ``folder`` is a checkpoint whose save finished (its ``trainer_state.json``, written last, reads)."""
    return _read_json(os.path.join(folder, TRAINER_STATE_NAME)) is not None


def checkpoints_in(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-N`` folder in ``output_dir``, by step."""
    found = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        m = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)
        if m and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(m.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def latest_complete_checkpoint(output_dir: str) -> tuple[str | None, list[str]]:
    """The newest complete checkpoint of ``output_dir`` and the incomplete ones newer than it (a save that was
    interrupted: resuming skips them)."""
    incomplete: list[str] = []
    for _, path in reversed(checkpoints_in(output_dir)):
        if is_complete_checkpoint(path):
            return path, incomplete
        incomplete.append(path)
    return None, incomplete


def _weight_keys(folder: str) -> set[str] | None:
    path = os.path.join(folder, SAFE_WEIGHTS_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            return set(f.keys())
    except (OSError, safetensors.SafetensorError) as e:
        raise CheckpointError(
            f"{path} cannot be read ({e}): the checkpoint is damaged. Resume from an earlier checkpoint."
        ) from None


def check_checkpoint_fits(container: nn.Module, folder: str) -> None:
    """Refuse, in one line, a checkpoint that does not hold exactly this run's container (another student or
    objective, an older hf_distill format, or no weights).

    Raises:
        CheckpointError: with what differs.
    """
    keys = _weight_keys(folder)
    if keys is None:
        raise CheckpointError(
            f"{folder} holds no {SAFE_WEIGHTS_NAME}: it is not a checkpoint of DistillationTrainer. Pass a "
            f"{PREFIX_CHECKPOINT_DIR}-N folder of this run."
        )
    own = set(container.state_dict())
    if keys == own:
        return
    if os.path.isfile(os.path.join(folder, OLD_STATE_NAME)):
        raise CheckpointError(
            f"{folder} was written by an earlier hf_distill (student and {OLD_STATE_NAME} apart), which this "
            "version cannot resume. Finish that run with the version that started it, or start the run again."
        )
    students = {k for k in own if k.startswith("student.")}
    if students != {k for k in keys if k.startswith("student.")}:
        what = "another student architecture"
    else:
        what = "the state of another objective"
    extra, missing = sorted(keys - own), sorted(own - keys)
    raise CheckpointError(
        f"{folder} holds {what} (it has {extra[:3]} that this run lacks and lacks {missing[:3]}). Resume with the "
        "same --student and --method, or start a new run in another --output_dir."
    )


def method_state(folder: str) -> dict[str, torch.Tensor]:
    """The methods' parameters and buffers in a checkpoint (every key of the container but the student's)."""
    state = safetensors.torch.load_file(os.path.join(folder, SAFE_WEIGHTS_NAME), device="cpu")
    return {k: v for k, v in state.items() if not k.startswith("student.")}


def finished_checkpoint(folder: str) -> bool:
    """Whether the checkpoint is the last step of its run (``global_step >= max_steps``)."""
    state = _read_json(os.path.join(folder, TRAINER_STATE_NAME)) or {}
    step, last = int(state.get("global_step") or 0), int(state.get("max_steps") or 0)
    return last > 0 and step >= last


def load_finished_checkpoint(container: nn.Module, folder: str) -> TrainerState:
    """Load the final checkpoint of a finished run into ``container`` (strictly) and return its trainer state."""
    state_dict = safetensors.torch.load_file(os.path.join(folder, SAFE_WEIGHTS_NAME), device="cpu")
    container.load_state_dict(state_dict, strict=True)
    return TrainerState.load_from_json(os.path.join(folder, TRAINER_STATE_NAME))


def write_student_folder(
    student: nn.Module, output_dir: str, args: TrainingArguments, processor: Any = None
) -> None:
    """Export the student alone into ``output_dir`` in Hub format, atomically as far as a reader can tell.

    Everything is written to ``output_dir/_export.tmp`` first; then the old ``config.json`` is removed, the other
    files are moved in, and ``config.json`` comes last. A kill at any point leaves either the complete new folder or
    one without a config, which evaluate.py and push.py report as incomplete (:func:`saved_model_problem`).
    """
    scratch = os.path.join(output_dir, EXPORT_SCRATCH)
    shutil.rmtree(scratch, ignore_errors=True)  # left by an interrupted export
    os.makedirs(scratch)
    if isinstance(student, PreTrainedModel):
        student.save_pretrained(scratch, safe_serialization=True)
    else:  # a plain nn.Module: its weights, loadable into the same class
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in student.state_dict().items()},
            os.path.join(scratch, SAFE_WEIGHTS_NAME),
            metadata={"format": "pt"},
        )
    if processor is not None:
        processor.save_pretrained(scratch)
    torch.save(
        args, os.path.join(scratch, TRAINING_ARGS_NAME)
    )  # the HF convention (the token pickles hidden)
    with open(os.path.join(scratch, TRAINING_ARGS_JSON), "w", encoding="utf-8") as f:
        f.write(args.to_json_string())  # what the card reads: a model folder's pickle is never unpickled
    config = os.path.join(output_dir, CONFIG_NAME)
    if os.path.exists(config):
        os.remove(config)
    names = sorted(os.listdir(scratch), key=lambda n: n == CONFIG_NAME)  # the config last
    for name in names:
        target = os.path.join(output_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(scratch, name), target)
    os.rmdir(scratch)


#: the weight files ``from_pretrained`` reads, one of which a saved model folder holds
WEIGHT_FILES = (
    SAFE_WEIGHTS_NAME,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def partial_export(folder: str) -> bool:
    """Whether ``folder`` holds part of a saved model without its ``config.json``: weights, or the scratch folder
    of an export that was interrupted (:func:`write_student_folder` writes the config last)."""
    return os.path.isdir(os.path.join(folder, EXPORT_SCRATCH)) or any(
        os.path.isfile(os.path.join(folder, w)) for w in WEIGHT_FILES
    )


def saved_model_problem(folder: str | os.PathLike) -> str | None:
    """What keeps a saved model folder from loading, or None when it is complete.

    Returns:
        ``"its config.json is missing"`` (an export cut short before its last file), ``"its config.json is
        empty"``, ``"its config.json is not a JSON object (cut short?)"``, ``"it has no weights
        (model.safetensors)"`` or ``"its <weights file> is empty"``.
    """
    folder = str(folder)
    config = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config):
        return f"its {CONFIG_NAME} is missing"
    if os.path.getsize(config) == 0:
        return f"its {CONFIG_NAME} is empty"
    if _read_json(config) is None:
        return f"its {CONFIG_NAME} is not a JSON object (cut short?)"
    present = [w for w in WEIGHT_FILES if os.path.isfile(os.path.join(folder, w))]
    if not present:
        return f"it has no weights ({WEIGHT_FILES[0]})"
    empty = [w for w in present if os.path.getsize(os.path.join(folder, w)) == 0]
    return f"its {empty[0]} is empty" if empty else None


__all__ = [
    "WEIGHT_FILES",
    "CheckpointError",
    "EXPORT_SCRATCH",
    "TRAINER_STATE_NAME",
    "check_checkpoint_fits",
    "checkpoints_in",
    "finished_checkpoint",
    "is_complete_checkpoint",
    "latest_complete_checkpoint",
    "load_finished_checkpoint",
    "method_state",
    "partial_export",
    "saved_model_problem",
    "write_student_folder",
]
