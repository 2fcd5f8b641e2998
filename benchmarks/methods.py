#!/usr/bin/env python
"""Every method side by side on the same short run: loss before/after and step time relative to KD.

    python benchmarks/methods.py                       # resnet56 (pretrained) -> resnet20, batch 64, 30 steps
    python benchmarks/methods.py --methods kd,crd,dkd --steps 50 --student cifar_resnet8

All methods run in one process, one after the other, on identical batches (same seed), so the step-time ratios are
measured under the same conditions: an untimed warm-up run first, and the reference (the first method, KD by
default) timed both first and last, the ratios taken against the mean of the two. Initialization stages (AB, FT,
FSP, IE-KD) are shortened to a few steps and timed separately: the step time is that of the main stage. The loss
columns give the total and the distillation terms alone (CE excluded). Prints a markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback, TrainingArguments

from hf_distill import DistillationTrainer
from hf_distill.data.datasets import load_image_dataset, prepare_split
from hf_distill.methods import METHODS, PRESETS, DistillationObjective
from hf_distill.models.loading import load_model
from hf_distill.models.normalization import input_spec
from hf_distill.training.mutual import prepare_peers

REPO = Path(__file__).resolve().parents[1]
INIT_STAGE_ARGS = {"init_epochs": 0.1}  # a few steps: enough to exercise the stage


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def run_method(name: str, args: argparse.Namespace, train, teacher_dir: str) -> dict:
    torch.manual_seed(0)
    teacher = load_model(teacher_dir, role="teacher")
    student = load_model(args.student, id2label=teacher.config.id2label)
    kwargs = {}
    methods = [m for m, _ in PRESETS[name].methods] if name in PRESETS else [name]
    for m in methods:
        if METHODS[m].hyperparameters().get("init_epochs"):
            kwargs[m] = dict(INIT_STAGE_ARGS)
        if m == "crd":
            kwargs[m] = {"nce_k": args.nce_k}
    objective = DistillationObjective.from_names(name, method_kwargs=kwargs)
    prepare_peers(objective, student, args.student, teacher.config.id2label, 0)  # dml's peers
    timer = StepTimer()
    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        objective=objective,
        args=TrainingArguments(
            output_dir=f"/tmp/hf_distill_bench/{name}",
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=0.05,
            optim="sgd",
            optim_args="momentum=0.9",
            weight_decay=5e-4,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            seed=0,
        ),
        train_dataset=train.dataset,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # keep stdout to the table
    t0 = time.perf_counter()
    if objective.init_stage_methods():
        trainer.run_init_stage()
    init_time = time.perf_counter() - t0
    timer.times.clear()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "init_stage_loss" not in h]
    # The distillation terms alone (every logged loss_* but cross-entropy): the total is dominated by CE for
    # methods whose terms are small.
    distill = [sum(float(v) for k, v in h.items() if k.startswith("loss_") and k != "loss_ce") for h in logs]
    skip = min(3, len(timer.times) - 1)  # warm-up steps
    return {
        "method": name,
        "first": logs[0]["loss"],
        "last": statistics.mean(h["loss"] for h in logs[-5:]),
        "distill_first": distill[0],
        "distill_last": statistics.mean(distill[-5:]),
        "step": statistics.median(timer.times[skip:]),
        "init": init_time,
        "params": sum(p.numel() for p in objective.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=None, help="comma list (default: every method and preset)")
    ap.add_argument("--student", default="cifar_resnet20")
    ap.add_argument("--teacher", default=str(REPO / "assets" / "teachers" / "cifar10-resnet56-jpeg"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--nce_k", type=int, default=4096)
    args = ap.parse_args()
    names = (
        args.methods.split(",")
        if args.methods
        else ["kd"] + sorted(m for m in list(METHODS) + list(PRESETS) if m != "kd")
    )
    spec = input_spec(load_model(args.student, num_labels=10))
    ds = load_image_dataset(str(REPO / "assets" / "cifar10-subset"), "train")
    train = prepare_split(
        ds, spec.mean, spec.std, spec.image_size, True, max_samples=args.steps * args.batch_size
    )
    # An untimed warm-up run first: the process's first training (allocator, thread pools, lazy imports) is slower
    # and would otherwise inflate whichever method comes first, i.e. the KD reference.
    run_method(names[0], args, train, args.teacher)
    rows = [run_method(n, args, train, args.teacher) for n in names]
    # The reference is timed again at the end: the mean of both is the ratios' denominator, and their gap shows how
    # much the machine drifted during the run.
    ref = rows[0]
    ref_again = run_method(ref["method"], args, train, args.teacher)
    kd = (ref["step"] + ref_again["step"]) / 2
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"\n{args.teacher.split('/')[-1]} -> {args.student}, batch {args.batch_size}, {args.steps} steps, {device}; "
        f"reference {ref['method']} timed first and last: {ref['step']:.3f} s / {ref_again['step']:.3f} s per step\n"
    )
    print(
        "| method | loss first step | loss last 5 steps | distill terms first | distill terms last 5 "
        "| step time (s) | vs KD | init stage (s) | loss params |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['first']:.4g} | {r['last']:.4g} | {r['distill_first']:.4g} "
            f"| {r['distill_last']:.4g} | {r['step']:.3f} | {r['step'] / kd:.2f}x | {r['init']:.1f} "
            f"| {r['params']:,} |"
        )


if __name__ == "__main__":
    main()
