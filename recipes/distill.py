#!/usr/bin/env python
"""Distill a teacher into a student.

    python recipes/distill.py                      # embedded default: CIFAR-10 subset, resnet56 -> resnet20, KD
    python recipes/distill.py --method crd_kd      # another method on the same default
    python recipes/distill.py --baseline           # also train the student alone (no teacher) and print the gain
    accelerate launch recipes/distill.py --config recipes/configs/cifar100/kd/resnet56_resnet20.yaml

Arguments: the fields of ModelArguments, DataArguments, DistillArguments (hf_distill/run/config.py) and
transformers.TrainingArguments; method hyperparameters as --<method>-<name> VALUE (e.g. --kd-temperature 2);
any of them in a YAML/JSON file given with --config. Run with --help for the full list.
"""

from __future__ import annotations

import os

# Before torch starts OpenMP (it reads this once): waiting threads sleep instead of spinning at every barrier, which
# beside other busy processes made a step several times slower (docs/speed_threads.md). Set it yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from hf_distill import distill  # noqa: E402
from hf_distill.console import exit_on_bad_input, process_log_level, setup_logging  # noqa: E402
from hf_distill.run.config import parse_args  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"

# The embedded default: needs no network and finishes in a few minutes on 2 CPU cores. The data is 100 images of each
# CIFAR-10 class, few enough that the teacher's soft labels pay within 60 short epochs (960 steps; docs/results.md:
# over 3 seeds the student is 4.7 points ahead of the same student trained alone, 30 epochs were too few), and the
# teacher the pretrained akamaster resnet56 adapted to these JPEG images, both under assets/ (with licences).
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
    setup_logging(logging.INFO)
    with exit_on_bad_input(ValueError):  # bad input: one readable line, exit status 2, no traceback
        model_args, data_args, distill_args, training_args, method_kwargs = parse_args(argv, DEFAULTS)
    setup_logging(process_log_level(training_args))  # --log_level error silences everything but errors
    with exit_on_bad_input(ValueError, traceback=distill_args.traceback):
        return distill(model_args, data_args, distill_args, training_args, method_kwargs)


if __name__ == "__main__":
    main()
