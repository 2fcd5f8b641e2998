"""One run, from parsed arguments to a saved (and, on request, published) student: what ``recipes/distill.py``
does, callable from Python as :func:`distill`.

The order is the user's: every argument is checked by building the run (data, models, objective, trainer) before the
output folder is looked at, so a mistake is reported as itself; then the folder is locked, the baseline trained
(``--baseline``), the checkpoint to resume checked against this run, the student trained, evaluated, and saved with
the transformers example scripts' result files (``train_results.json``, ``eval_results.json``, ``all_results.json``,
``trainer_state.json``) plus the Hub layer's card and summary.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
import time
from typing import Any

from transformers import TrainingArguments

from ..data.streaming import is_stream
from ..data.transforms import preserved_rng
from ..training.checkpoints import latest_complete_checkpoint
from ..training.non_finite import NonFiniteLossError
from ..training.outputs import ALL_RESULTS
from .baseline import comparison_line, train_or_reuse_baseline
from .build import Run, build_run
from .config import DataArguments, DistillArguments, ModelArguments
from .preflight import OutputFolderError, existing_dirs, guarded_output_dir, warn_if_teacher_at_chance
from .run_record import RunRecordCallback, check_resume, resolve_resume, run_signature, whole_run

logger = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the run stopped and how to continue it."""


def distill(
    model_args: ModelArguments,
    data_args: DataArguments,
    distill_args: DistillArguments,
    training_args: TrainingArguments,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build, train, evaluate and save one distillation run (and its baseline with ``--baseline``).

    Args:
        model_args, data_args, distill_args, training_args: the parsed arguments (:func:`hf_distill.run.config.parse_args`).
        method_kwargs: method hyperparameters (``{"kd": {"temperature": 2.0}}``).

    Returns:
        The run's results (what ``all_results.json`` holds): ``eval_accuracy``, ``eval_teacher_accuracy``,
        ``train_minutes``, ``baseline_accuracy`` with ``--baseline``, ...

    Raises:
        ValueError: bad input, with one line saying what is wrong and how to fix it.
        RunInterrupted: Ctrl-C during training (the last checkpoint is intact).
    """
    out = training_args.output_dir
    existed = existing_dirs(out)
    check_output_path(out)
    from ..hub.reporting import (
        check_report_to,
    )  # the entry point reaches the Hub layer only where it needs it

    check_report_to(training_args.report_to)  # a missing logger package is one line, not Trainer's traceback
    resume = resolve_resume(training_args.resume_from_checkpoint, out)
    run = build_run(model_args, data_args, distill_args, training_args, method_kwargs)
    check_resume_target(resume, out, distill_args.overwrite_output_dir)
    with guarded_output_dir(out, distill_args.overwrite_output_dir, resume is not None, existed):
        return _train_and_save(run, model_args, data_args, distill_args, training_args, method_kwargs, resume)


def check_output_path(output_dir: str) -> None:
    """Refuse an output path that is a file or lies under one (``file.txt/run``), before anything is built.

    Raises:
        OutputFolderError: naming the file in the way.
    """
    path = os.path.abspath(output_dir)
    while path and not os.path.exists(path):
        path = os.path.dirname(path) if os.path.dirname(path) != path else ""
    if path and not os.path.isdir(path):
        where = "is a file" if path == os.path.abspath(output_dir) else f"lies under the file {path}"
        raise OutputFolderError(f"--output_dir {output_dir} {where}, not a folder: pass a folder path.")


def check_resume_target(resume: str | None, output_dir: str, overwrite: bool) -> None:
    """Refuse to resume a checkpoint of another folder into an output folder that holds a run of its own: the
    final save and checkpoint rotation would replace that run's files.

    Raises:
        OutputFolderError: unless ``overwrite`` (``--overwrite_output_dir``).
    """
    if resume is None or overwrite or not os.path.isdir(output_dir):
        return
    inside = os.path.commonpath([os.path.abspath(resume), os.path.abspath(output_dir)]) == os.path.abspath(
        output_dir
    )
    held = [e for e in os.listdir(output_dir) if not e.startswith(("_", "."))]
    if not inside and held:
        raise OutputFolderError(
            f"--resume_from_checkpoint {resume} belongs to another folder, and --output_dir {output_dir} holds a run "
            f"of its own ({', '.join(sorted(held)[:3])}{', ...' if len(held) > 3 else ''}) that resuming would "
            "overwrite. Resume into the checkpoint's own folder, pick an empty --output_dir, or pass "
            "--overwrite_output_dir."
        )


def _train_and_save(
    run: Run, model_args, data_args, distill_args, training_args, method_kwargs, resume
) -> dict:
    trainer = run.trainer
    out = training_args.output_dir
    if resume is not None:
        _drop_incomplete_checkpoints(out, resume)
    baseline: dict[str, Any] = {}
    if distill_args.baseline:
        # The baseline trains first and never runs the teacher; the random state is put back afterwards, so the
        # distillation run is exactly the one a run without --baseline makes.
        with preserved_rng(cuda=True):
            baseline = train_or_reuse_baseline(
                model_args, data_args, distill_args, training_args, resuming=resume is not None
            )
    objective = trainer.model.objective.describe()
    signature = run_signature(model_args, data_args, distill_args, training_args, objective)
    previous = check_resume(resume, signature, distill_args.resume_ignore_changes) if resume else []
    trainer.log_objective()
    checked = run.eval.dataset if run.eval is not None else run.train.dataset
    if is_stream(checked):  # a stream has no first rows to evaluate on without moving it
        checked = None
    warn_if_teacher_at_chance(trainer, checked, run.train.num_classes)
    t0 = time.time()
    record = RunRecordCallback(trainer, signature, previous, t0)
    trainer.add_callback(record)
    output = _train(trainer, resume)
    minutes = (time.time() - t0) / 60
    results: dict[str, Any] = whole_run(
        previous, minutes, output.training_loss, trainer.state.global_step - record.start_step
    )
    _whole_run_into_log(trainer.state.log_history, results)
    eval_metrics: dict[str, Any] = {}
    if run.eval is not None:
        eval_metrics = trainer.evaluate()
        _check_evaluation(eval_metrics, trainer.state.global_step)
        results.update({k: v for k, v in eval_metrics.items() if "accuracy" in k})
    if trainer.teacher_cache is not None:
        results.update(trainer.teacher_cache.report())
    skips = trainer.model.objective.short_batch_skips
    if skips:  # batches below a method's minimum, where its term was left out (docs/reliability.md)
        results["short_batch_skips"] = dict(skips)
    results.update(baseline)
    if run.carved_eval is not None:
        results["validation_split"] = run.carved_eval.as_dict()
    trainer.check_finite_state()  # before anything is written: a diverged run leaves no results behind
    _save_results(trainer, results, eval_metrics, objective)
    trainer.summary_fields.update(baseline)
    trainer.save_model()  # the student, its card (with the baseline), and the push with --push_to_hub
    from ..hub.peers import export_peers

    peers = export_peers(trainer, out, push=training_args.push_to_hub)  # dml: peer<k>/
    if trainer.is_world_process_zero():
        _print_summary(results, distill_args, minutes, out, peers)
    return results


def _train(trainer, resume: str | None):
    """``trainer.train``, with Ctrl-C and an unreadable checkpoint file reported in one line."""
    try:
        return trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        last, _ = latest_complete_checkpoint(trainer.args.output_dir)
        where = f"at step {trainer.state.global_step}"
        advice = (
            f"the last checkpoint is {last}: continue with --resume_from_checkpoint true"
            if last
            else "no checkpoint was saved yet: run it again (or save more often with --save_steps)"
        )
        raise RunInterrupted(f"interrupted {where}; {advice}") from None
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{resume} holds a file that cannot be read safely ({str(e).splitlines()[0][:120]}): the checkpoint is "
            "damaged or was not written by this trainer. Resume from another checkpoint."
        ) from None


def _drop_incomplete_checkpoints(output_dir: str, resume: str) -> None:
    """Remove the checkpoints newer than the one resumed whose save never finished (a kill during a save): the run
    writes them again, and a half-written folder must not be mistaken for a checkpoint later."""
    if not os.path.isdir(output_dir):
        return
    _, incomplete = latest_complete_checkpoint(output_dir)
    for path in incomplete:
        if os.path.abspath(path) != os.path.abspath(resume):
            logger.warning("Removing %s: its save was interrupted (no readable trainer_state.json).", path)
            shutil.rmtree(path, ignore_errors=True)


def _check_evaluation(metrics: dict[str, Any], step: int) -> None:
    """A run whose evaluation loss is not finite diverged, even when its weights still are: nothing is saved.

    Raises:
        NonFiniteLossError: naming the loss and what to change.
    """
    loss = metrics.get("eval_loss")
    if loss is not None and not math.isfinite(float(loss)):
        raise NonFiniteLossError(
            f"The run diverged: after step {step} the evaluation loss is {loss} (weights this large give no usable "
            "predictions), so the model was not saved. Lower --learning_rate (or check the data), then run again."
        )


def _save_results(trainer, results: dict[str, Any], eval_metrics: dict[str, Any], objective: dict) -> None:
    """The transformers example scripts' result files, and the trainer state at the root of the output folder."""
    train_metrics = {k: v for k, v in results.items() if k.startswith("train_")}
    trainer.save_metrics("train", train_metrics, combined=False)
    if eval_metrics:
        trainer.save_metrics("eval", eval_metrics, combined=False)
    trainer.save_metrics("all", {**results, "objective": objective}, combined=False)
    trainer.save_state()


def _print_summary(results: dict[str, Any], distill_args, minutes: float, out: str, peers: list[str]) -> None:
    teacher, student = results.get("eval_teacher_accuracy"), results.get("eval_accuracy")
    if distill_args.baseline:
        print("\n" + comparison_line(teacher, results.get("baseline_accuracy"), student))
    print(
        f"\nteacher accuracy: {teacher if teacher is None else f'{teacher:.4f}'}   "
        f"student accuracy: {student if student is None else f'{student:.4f}'}   "
        f"({distill_args.method}, {minutes:.1f} min) -> {out}"
    )
    for k, folder in enumerate(peers, 1):
        print(f"peer {k} accuracy: {results.get(f'eval_peer{k}_accuracy', float('nan')):.4f} -> {folder}")


def _whole_run_into_log(log_history: list[dict[str, Any]], totals: dict[str, Any]) -> None:
    """Make the final training record (what the model card reads) cover the whole run, not only this segment."""
    final = next((r for r in reversed(log_history) if "train_runtime" in r), None)
    if final is not None and totals["train_segments"] > 1:
        final["segment_train_runtime"] = final["train_runtime"]
        final["train_runtime"] = round(60 * totals["train_minutes"], 2)
        final["train_loss"] = totals["train_loss"]
        final["train_segments"] = totals["train_segments"]


__all__ = ["ALL_RESULTS", "RunInterrupted", "check_output_path", "check_resume_target", "distill"]
