"""The no-distillation baseline: the same student trained alone, to measure what distillation adds.

A baseline run is the distillation run with the objective replaced by plain cross-entropy (``--method none``) and
no teacher at all: same data, schedule, augmentation and seed, and the teacher is never loaded nor run (not even to
report its accuracy), so the comparison costs only the student's training. Used by ``recipes/distill.py
--baseline`` and ``benchmarks/accuracy.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .build import Run, build_run
from .config import DataArguments, DistillArguments, ModelArguments
from .run_record import listed_differences, run_signature, signature_differences

logger = logging.getLogger(__name__)

#: the baseline's output folder inside the distillation run's
BASELINE_DIR = "baseline"
#: in the baseline's folder once it is trained: its defining arguments and its evaluation metrics
BASELINE_RESULTS = "baseline_results.json"


@dataclass
class TrainedRun:
    """A finished run: its evaluation metrics (``eval_*`` keys) and where the time went."""

    run: Run
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    init_stage_seconds: float = 0.0


def train_and_evaluate(run: Run, resume_from_checkpoint: str | bool | None = None) -> TrainedRun:
    """Train a built run (init stage included) and evaluate it once on its eval split, if it has one.

    ``train_seconds`` covers the whole ``train`` call, init stage included; ``init_stage_seconds`` the stage alone.
    """
    trainer = run.trainer
    timed = {"init": 0.0}
    init_stage = trainer.run_init_stage

    def run_init_stage_timed() -> dict[str, float]:
        t = time.perf_counter()
        try:
            return init_stage()
        finally:
            timed["init"] += time.perf_counter() - t

    trainer.run_init_stage = run_init_stage_timed  # the trainer calls it from train()
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        trainer.run_init_stage = init_stage
    seconds = time.perf_counter() - t0
    metrics = {}
    if run.eval is not None:
        metrics = {k: float(v) for k, v in trainer.evaluate().items() if "accuracy" in k}
    return TrainedRun(run, metrics, seconds, timed["init"])


def baseline_arguments(
    model_args: ModelArguments,
    distill_args: DistillArguments,
    training_args: TrainingArguments,
    output_dir: str | None = None,
) -> tuple[ModelArguments, DistillArguments, TrainingArguments]:
    """The arguments of the no-distillation twin of a run: method ``none``, no teacher, its own output folder
    (default: ``<output_dir>/baseline``); everything else (student, data, schedule, seed) unchanged."""
    out = output_dir or os.path.join(training_args.output_dir, BASELINE_DIR)
    b_model = dataclasses.replace(model_args, teacher=None, teacher_weights=None)
    b_distill = dataclasses.replace(
        distill_args, method="none", method_weights=None, method_args=None, ce_weight=None
    )
    b_training = dataclasses.replace(
        training_args, output_dir=out, push_to_hub=False, resume_from_checkpoint=None
    )
    return b_model, b_distill, b_training


def build_baseline(
    model_args: ModelArguments,
    data_args: DataArguments,
    distill_args: DistillArguments,
    training_args: TrainingArguments,
    output_dir: str | None = None,
) -> Run:
    """The no-distillation twin of a run, built (see :func:`baseline_arguments`) but not trained.

    Raises:
        ValueError: bad input (as :func:`~hf_distill.run.build.build_run`).
    """
    b_model, b_distill, b_training = baseline_arguments(model_args, distill_args, training_args, output_dir)
    return build_run(b_model, data_args, b_distill, b_training)


def run_baseline(run: Run) -> TrainedRun:
    """Train and evaluate a baseline built by :func:`build_baseline`, and save it to its folder like any run."""
    done = train_and_evaluate(run)
    run.trainer.save_model()
    return done


def finished_baseline(folder: str, signature: dict[str, Any]) -> dict[str, float] | None:
    """The metrics of the baseline already trained in ``folder`` with these defining arguments (None: none there).

    Raises:
        ValueError: the folder's baseline was trained with other arguments (one line listing them).
    """
    path = os.path.join(folder, BASELINE_RESULTS)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    diffs = signature_differences(saved.get("signature", {}), signature)
    if diffs:
        raise ValueError(
            f"{folder} holds a baseline trained with other arguments ({listed_differences(diffs)}). Resume with "
            "the arguments it was trained with, or delete that folder to train the baseline again."
        )
    return {k: float(v) for k, v in saved.get("metrics", {}).items()}


def train_or_reuse_baseline(
    model_args: ModelArguments,
    data_args: DataArguments,
    distill_args: DistillArguments,
    training_args: TrainingArguments,
    resuming: bool,
) -> dict[str, Any]:
    """``--baseline``: train the run's no-distillation twin, or, when the run resumes and the twin already finished
    with the same defining arguments, reuse its metrics; the :func:`baseline_fields` either way.

    Raises:
        ValueError: bad input, or a finished baseline of other arguments in the folder of a resumed run.
    """
    # One set of arguments for the run and its signature: replacing TrainingArguments again after the trainer is
    # built would reset Accelerate's state under it.
    b_model, b_distill, b_training = baseline_arguments(model_args, distill_args, training_args)
    run = build_run(b_model, data_args, b_distill, b_training)
    folder = b_training.output_dir
    signature = run_signature(
        b_model, data_args, b_distill, b_training, run.trainer.model.objective.describe()
    )
    metrics = finished_baseline(folder, signature) if resuming else None
    if metrics is not None:
        logger.info(
            "The baseline in %s is already trained (accuracy %s): reused.",
            folder,
            metrics.get("eval_accuracy"),
        )
        return baseline_fields(metrics)
    metrics = run_baseline(run).metrics
    if run.trainer.is_world_process_zero():
        tmp = os.path.join(folder, BASELINE_RESULTS + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"signature": signature, "metrics": metrics}, f, indent=2)
        os.replace(tmp, os.path.join(folder, BASELINE_RESULTS))
    return baseline_fields(metrics)


def baseline_fields(metrics: dict[str, float]) -> dict[str, Any]:
    """The summary / ``all_results.json`` fields of a baseline's evaluation metrics."""
    return {
        "baseline_accuracy": metrics.get("eval_accuracy"),
        "baseline_top5_accuracy": metrics.get("eval_top5_accuracy"),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def comparison_line(teacher: float | None, baseline: float | None, student: float | None) -> str:
    """``teacher 89.30%   baseline 60.10%   student 61.40%   gain +1.30 points`` (n/a for what is unknown)."""
    gain = "n/a" if baseline is None or student is None else f"{100 * (student - baseline):+.2f} points"
    return (
        f"teacher {_pct(teacher)}   baseline (no distillation) {_pct(baseline)}   student {_pct(student)}   "
        f"gain {gain}"
    )


__all__ = [
    "BASELINE_DIR",
    "BASELINE_RESULTS",
    "TrainedRun",
    "baseline_arguments",
    "baseline_fields",
    "build_baseline",
    "comparison_line",
    "finished_baseline",
    "run_baseline",
    "train_and_evaluate",
    "train_or_reuse_baseline",
]
