#!/usr/bin/env python
"""Distill a teacher into a student.

    python recipes/distill.py                      # embedded default: CIFAR-10 subset, resnet56 -> resnet20, KD
    python recipes/distill.py --method crd_kd      # another method on the same default
    python recipes/distill.py --baseline           # also train the student alone (no teacher) and print the gain
    accelerate launch recipes/distill.py --config recipes/configs/cifar100/kd/resnet56_resnet20.yaml

Arguments: the fields of ModelArguments, DataArguments, DistillArguments (hf_distill/config.py) and
transformers.TrainingArguments; method hyperparameters as --<method>-<name> VALUE (e.g. --kd-temperature 2);
any of them in a YAML/JSON file given with --config. Run with --help for the full list.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from hf_distill.baseline import comparison_line, train_or_reuse_baseline
from hf_distill.cli import LOG_FORMAT, exit_on_bad_input
from hf_distill.config import parse_args
from hf_distill.guards import guarded_output_dir, warn_if_teacher_at_chance
from hf_distill.mutual import export_peers
from hf_distill.pipeline import build_run
from hf_distill.run_record import RunRecordCallback, check_resume, resolve_resume, run_signature, whole_run

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"

# The embedded default: needs no network and finishes in a few minutes on 2 CPU cores. The data is 100 images of each
# CIFAR-10 class, few enough that the teacher's soft labels pay within 60 short epochs (960 steps; README, "Two
# commands": over 3 seeds the student is 4.7 points ahead of the same student trained alone, 30 epochs were too few),
# and the teacher the pretrained akamaster resnet56 adapted to these JPEG images, both under assets/ (with licences).
DEFAULTS = {
    "dataset": str(ASSETS / "cifar10-1k"),
    "teacher": str(ASSETS / "teachers" / "cifar10-resnet56-jpeg"),
    "student": "cifar_resnet20",
    "method": "kd",
    "output_dir": "outputs/default",
    "num_train_epochs": 60,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "learning_rate": 0.05,
    "optim": "sgd",
    "optim_args": "momentum=0.9",
    "weight_decay": 5e-4,
    "lr_scheduler_type": "cosine",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 20,
    "report_to": "none",
    "seed": 0,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": torch.cuda.is_available(),
    # Without a GPU, run (and, under `accelerate launch`, distribute with gloo) on the CPU.
    "use_cpu": not torch.cuda.is_available(),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO)
    with exit_on_bad_input(ValueError):  # bad input: one readable line, exit status 2, no traceback
        model_args, data_args, distill_args, training_args, method_kwargs = parse_args(argv, DEFAULTS)
        resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    # The whole run, training included, reports bad input the same way; the output folder is locked meanwhile, and
    # a failed run leaves no empty folders behind.
    with (
        exit_on_bad_input(ValueError, traceback=distill_args.traceback),
        guarded_output_dir(training_args.output_dir, distill_args.overwrite_output_dir, resume is not None),
    ):
        return _distill(model_args, data_args, distill_args, training_args, method_kwargs, resume)


def _distill(model_args, data_args, distill_args, training_args, method_kwargs, resume) -> dict[str, Any]:
    baseline: dict[str, Any] = {}
    if distill_args.baseline:
        # The baseline trains first (never running the teacher), so the distillation run is exactly the one a run
        # without --baseline makes; a resumed run reuses the baseline it already trained.
        baseline = train_or_reuse_baseline(
            model_args, data_args, distill_args, training_args, resuming=resume is not None
        )
    run = build_run(model_args, data_args, distill_args, training_args, method_kwargs)
    trainer = run.trainer
    objective = trainer.model.objective.describe()
    signature = run_signature(model_args, data_args, distill_args, training_args, objective)
    previous = check_resume(resume, signature, distill_args.resume_ignore_changes) if resume else []
    trainer.log_objective()
    warn_if_teacher_at_chance(
        trainer, run.eval.dataset if run.eval is not None else run.train.dataset, run.train.num_classes
    )
    t0 = time.time()
    record = RunRecordCallback(trainer, signature, previous, t0)
    trainer.add_callback(record)
    output = trainer.train(resume_from_checkpoint=resume)
    minutes = (time.time() - t0) / 60
    results: dict[str, Any] = whole_run(
        previous, minutes, output.training_loss, trainer.state.global_step - record.start_step
    )
    _whole_run_into_log(trainer.state.log_history, results)
    if run.eval is not None:
        metrics = trainer.evaluate()
        results.update({k: v for k, v in metrics.items() if "accuracy" in k})
    if trainer.teacher_cache is not None:
        results.update(trainer.teacher_cache.report())
    trainer.save_model()
    if baseline:
        from hf_distill.hub.publish import save_hook

        results.update(baseline)
        save_hook(trainer, **baseline)  # the card again, now with the baseline's entry and the gain
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=data_args.dataset, **baseline)
    peers = export_peers(trainer, training_args.output_dir, push=training_args.push_to_hub)  # dml: peer<k>/
    if trainer.is_world_process_zero():
        if run.carved_eval is not None:
            results["validation_split"] = run.carved_eval.as_dict()
        with open(os.path.join(training_args.output_dir, "distill_results.json"), "w") as f:
            json.dump({**results, "objective": objective}, f, indent=2)
        teacher = results.get("eval_teacher_accuracy")
        student = results.get("eval_accuracy")
        if distill_args.baseline:
            print("\n" + comparison_line(teacher, results.get("baseline_accuracy"), student))
        print(
            f"\nteacher accuracy: {teacher if teacher is None else f'{teacher:.4f}'}   "
            f"student accuracy: {student if student is None else f'{student:.4f}'}   "
            f"({distill_args.method}, {minutes:.1f} min) -> {training_args.output_dir}"
        )
        for k, folder in enumerate(peers, 1):
            print(f"peer {k} accuracy: {results.get(f'eval_peer{k}_accuracy', float('nan')):.4f} -> {folder}")
    return results


def _whole_run_into_log(log_history: list[dict[str, Any]], totals: dict[str, Any]) -> None:
    """Make the final training record (what the model card reads) cover the whole run, not only this segment."""
    final = next((r for r in reversed(log_history) if "train_runtime" in r), None)
    if final is not None and totals["train_segments"] > 1:
        final["segment_train_runtime"] = final["train_runtime"]
        final["train_runtime"] = round(60 * totals["train_minutes"], 2)
        final["train_loss"] = totals["train_loss"]
        final["train_segments"] = totals["train_segments"]


if __name__ == "__main__":
    main()
