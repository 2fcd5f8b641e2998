#!/usr/bin/env python
"""Epoch time of KD training with a warm teacher-output cache vs without one, side by side in one process.

    python benchmarks/teacher_cache_speed.py                      # resnet56 -> resnet20 and resnet32x4 -> resnet8x4
    python benchmarks/teacher_cache_speed.py --rows 2048 --repeats 5 --json cache.json
    python benchmarks/teacher_cache_speed.py --threads 1           # on a CPU shared with other jobs

For each pair: one epoch fills the cache (its time is the cold-cache epoch: the teacher runs and its outputs are
written), then uncached, warm-cache and student-alone epochs alternate ``--repeats`` times (same student initialization,
same data, same seed), so that a change in the machine's load hits all alike. The student alone (no teacher, plain
cross-entropy) is the floor a perfect cache would reach: ``ceiling`` = uncached / alone is the most any cache can
save on this machine, ``warm / alone`` how close the cache gets to it. Reported: the median epoch time of each mode,
their ratios, the cache's disk use per epoch and the machine's load average. The networks are freshly initialized
(timing does not depend on their weights) with heads of the data's classes; batch 64, float32, on the GPU when there
is one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from hf_distill.data.datasets import load_image_dataset, prepare_split
from hf_distill.models.loading import load_model
from hf_distill.models.normalization import input_spec
from hf_distill.training.trainer import DistillationTrainer

REPO = Path(__file__).resolve().parents[1]
PAIRS = [("cifar_resnet56", "cifar_resnet20"), ("cifar_resnet32x4", "cifar_resnet8x4")]


class EpochTimer(TrainerCallback):
    """Wall time of each training epoch (data loading included, evaluation and saving excluded: there are none)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.t0)


def epoch_time(
    teacher_name: str | None, student_name: str, split, args: TrainingArguments, cache: str | None
):
    """Train one epoch of KD from fresh networks (no teacher: the student alone); returns (seconds, the trainer)."""
    torch.manual_seed(0)
    teacher = None
    if teacher_name is not None:
        teacher = load_model(teacher_name, num_labels=split.num_classes, role="teacher")
    student = load_model(student_name, num_labels=split.num_classes)
    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        objective="kd" if teacher is not None else "none",
        args=args,
        train_dataset=split.dataset,
        report_teacher_accuracy=False,
        teacher_cache=cache,
    )
    timer = EpochTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.times[0], trainer


def bench_pair(teacher_name: str, student_name: str, raw, rows: int, repeats: int, workdir: str) -> dict:
    spec = input_spec(load_model(student_name, num_labels=10))
    split = prepare_split(raw, spec.mean, spec.std, spec.image_size, True, max_samples=rows, seed=0)
    args = TrainingArguments(
        output_dir=os.path.join(workdir, "out"),
        per_device_train_batch_size=64,
        num_train_epochs=1,
        learning_rate=0.05,
        optim="sgd",
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    cache = os.path.join(workdir, f"cache-{teacher_name}")
    cold, trainer = epoch_time(teacher_name, student_name, split, args, cache)
    uncached, warm, alone = [], [], []
    for _ in range(repeats):
        uncached.append(epoch_time(teacher_name, student_name, split, args, None)[0])
        t, trainer = epoch_time(teacher_name, student_name, split, args, cache)
        assert trainer.teacher_cache.computed_rows == 0, "the warm epoch ran the teacher"
        warm.append(t)
        # the floor: the student trained alone (no teacher, no cache), the time a perfect cache would reach
        alone.append(epoch_time(None, student_name, split, args, None)[0])
    report = trainer.teacher_cache.report()
    u, w, a = statistics.median(uncached), statistics.median(warm), statistics.median(alone)
    return {
        "pair": f"{teacher_name} -> {student_name}",
        "rows": rows,
        "uncached_s": round(u, 3),
        "uncached_spread_s": round(max(uncached) - min(uncached), 3),
        "warm_s": round(w, 3),
        "warm_spread_s": round(max(warm) - min(warm), 3),
        "cold_s": round(cold, 3),
        "speedup": round(u / w, 2),
        "alone_s": round(a, 3),
        "alone_spread_s": round(max(alone) - min(alone), 3),
        # the most any cache can give on this machine (the teacher's whole share), and how close the cache gets
        "ceiling": round(u / a, 2),
        "warm_over_alone": round(w / a, 3),
        "cache_bytes_per_epoch": report["teacher_cache_bytes_per_epoch"],
        "cache_bytes_per_row": round(report["teacher_cache_bytes_per_epoch"] / rows, 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pairs",
        default=",".join(f"{t}:{s}" for t, s in PAIRS),
        help="comma list of teacher:student model names",
    )
    ap.add_argument("--rows", type=int, default=1024, help="training rows per epoch")
    ap.add_argument("--repeats", type=int, default=3, help="uncached/warm epoch pairs per model pair")
    ap.add_argument("--dataset", default=str(REPO / "assets" / "cifar10-subset"))
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument(
        "--threads", type=int, default=None, help="CPU threads (1 is steadier on a loaded machine)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = load_image_dataset(args.dataset, "train")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        pairs = [p.split(":") for p in args.pairs.split(",")]
        results = [bench_pair(t, s, raw, args.rows, args.repeats, workdir) for t, s in pairs]
    load = [round(max(a, b), 2) for a, b in zip(load_before, os.getloadavg())]
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"KD, batch 64, {args.rows} rows per epoch, {device}; load average (1/5/15 min, max of start and end): {load}\n"
    )
    print(
        "| pair | uncached epoch (s) | warm-cache epoch (s) | speedup | student alone (s) | ceiling "
        "| warm / alone | cold-cache epoch (s) | cache per epoch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['pair']} | {r['uncached_s']} ± {r['uncached_spread_s']} | {r['warm_s']} ± {r['warm_spread_s']} "
            f"| {r['speedup']}x | {r['alone_s']} ± {r['alone_spread_s']} | {r['ceiling']}x "
            f"| {r['warm_over_alone']} | {r['cold_s']} | {r['cache_bytes_per_epoch'] / 2**20:.2f} MiB "
            f"({r['cache_bytes_per_row']} B/row) |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "load_average": load, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
