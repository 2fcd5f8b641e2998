#!/usr/bin/env python
"""The GPU check: what a GPU machine should confirm, in one run of a few minutes, written as JSON to one folder.

    bash benchmarks/gpu_check.sh OUT_DIR             # on one GPU (stopped after 8 minutes)
    python benchmarks/gpu_check.py OUT_DIR --dry_run  # on the CPU at tiny sizes: the same files, marked dry

Parts (each writes ``OUT_DIR/<part>.json``; ``OUT_DIR/summary.json`` holds the device, each part's status and time,
and the memory peaks):

* ``cuda_tests``: the tests that need CUDA (those that skip without it), with pytest;
* ``precision``: bf16 and fp16 (gradient scaling) training through the ``DistillationTrainer``, resnet32x4 ->
  resnet8x4 with 100-class heads on random data, KD and ReviewKD: finite losses, the losses at the start and the end,
  step time and peak memory;
* ``throughput``: ``benchmarks/throughput.py`` for kd, dkd, crd, reviewkd and ofd on resnet32x4 -> resnet8x4, plain,
  with channels-last, and with channels-last and ``torch.compile``;
* ``cifar10``: 2 epochs of the default recipe (resnet56 -> resnet20, KD) on ``../shared/data/cifar10`` when present,
  else on ``assets/cifar10-subset``, and its accuracies.

A part that fails is recorded with its error and the next one runs. Without a GPU (or with ``--dry_run``) every part
runs on the CPU at tiny sizes (tiny pairs, a few steps; no compile) so that the script itself is tested.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import PrinterCallback, TrainerCallback, TrainingArguments  # noqa: E402

from benchmarks import throughput  # noqa: E402
from hf_distill import DistillationTrainer  # noqa: E402
from hf_distill.methods import DistillationObjective  # noqa: E402

PAIR = "resnet32x4-resnet8x4"
METHODS = ("kd", "dkd", "crd", "reviewkd", "ofd")
PRECISION_METHODS = ("kd", "reviewkd")
#: throughput configurations: name -> flags of benchmarks/throughput.py
THROUGHPUT_OPTIONS = {
    "plain": [],
    "channels_last": ["--channels_last"],
    "channels_last_compile": ["--channels_last", "--compile"],
}
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
SUBSET = REPO / "assets" / "cifar10-subset"
#: a test that skips without CUDA says so in a skipif on torch.cuda.is_available()
CUDA_TEST = re.compile(r"skipif\([^)]*cuda\.is_available", re.S)


class Sizes:
    """The sizes of a run: full on a GPU, tiny for the CPU dry path."""

    def __init__(self, dry: bool) -> None:
        self.pair = "cifar_resnet8:cifar_resnet8" if dry else PAIR
        self.batch_size = 4 if dry else 128
        self.steps = 2 if dry else 30
        self.warmup = 1 if dry else 5
        self.rows = (
            20_000 if dry else throughput.TRAIN_ROWS
        )  # CRD's bank needs more rows than its 16,384 negatives
        self.options = {"plain": []} if dry else THROUGHPUT_OPTIONS


def cuda_tests(out: Path, sizes: Sizes, dry: bool) -> dict:
    """The test files with a CUDA skip, run with pytest (listed only in a dry run)."""
    files = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").rglob("test_*.py")
        if CUDA_TEST.search(p.read_text())
    )
    if dry or not files:
        return {
            "files": files,
            "ran": False,
            "note": "dry run" if dry else "no test in tests/ skips without CUDA",
        }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return {"files": files, "ran": True, "returncode": done.returncode, "tail": done.stdout[-3000:]}


class LossLog(TrainerCallback):
    """The training loss at every logging step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def precision(out: Path, sizes: Sizes, dry: bool) -> dict:
    """bf16 and fp16 (fp16 with gradient scaling, as transformers applies it) through the trainer, per method."""
    device = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    rows = {}
    for dtype in ("bf16", "fp16"):
        for method in PRECISION_METHODS:
            key = f"{dtype}/{method}"
            if device.type == "cpu" and dtype == "fp16":
                rows[key] = {"skipped": "fp16 mixed precision needs CUDA"}
                continue
            rows[key] = precision_run(
                out / "precision_runs" / key.replace("/", "_"), dtype, method, sizes, device
            )
    return {
        "device": str(device),
        "pair": sizes.pair,
        "runs": rows,
        "ok": all(r.get("finite", True) for r in rows.values()),
    }


def precision_run(out: Path, dtype: str, method: str, sizes: Sizes, device: torch.device) -> dict:
    teacher, student = throughput.load_pair(sizes.pair, throughput.Options())
    log = LossLog()
    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        objective=DistillationObjective.from_names(method, method_kwargs={}),
        args=TrainingArguments(
            output_dir=str(out),
            per_device_train_batch_size=sizes.batch_size,
            max_steps=sizes.warmup + sizes.steps,
            learning_rate=0.05,
            optim="sgd",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=device.type == "cpu",
            disable_tqdm=True,
            bf16=dtype == "bf16",
            fp16=dtype == "fp16",
            seed=0,
        ),
        train_dataset=throughput.SyntheticRows(rows=sizes.batch_size * (sizes.warmup + sizes.steps)),
        report_teacher_accuracy=False,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(log)
    throughput.reset_peak_memory(device)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    finite = bool(log.losses) and all(map(lambda v: v == v and abs(v) != float("inf"), log.losses))
    return {
        "finite": finite,
        "first_loss": log.losses[0] if log.losses else None,
        "last_loss": log.losses[-1] if log.losses else None,
        "steps": len(log.losses),
        "seconds_per_step": seconds / max(len(log.losses), 1),
        "peak_mb": throughput.peak_memory_mb(device),
        "grad_scaler": dtype == "fp16",
    }


def throughput_part(out: Path, sizes: Sizes, dry: bool) -> dict:
    """``benchmarks/throughput.py`` per configuration, in this process (each method's memory peak reset)."""
    common = ["--methods", ",".join(METHODS), "--pairs", sizes.pair, "--batch_size", str(sizes.batch_size)]
    common += ["--steps", str(sizes.steps), "--warmup", str(sizes.warmup), "--rows", str(sizes.rows)]
    configs = {}
    for name, flags in THROUGHPUT_OPTIONS.items():
        if name not in sizes.options:
            configs[name] = {
                "skipped": "dry run: the plain configuration only (compiling on the CPU takes minutes)"
            }
            continue
        configs[name] = throughput.main([*common, *flags, "--out", str(out / f"throughput_{name}.json")])
    return configs


def cifar10(out: Path, sizes: Sizes, dry: bool) -> dict:
    """2 epochs of the default recipe (2 steps in a dry run) on CIFAR-10, in this process."""
    data = SHARED_CIFAR10 if SHARED_CIFAR10.exists() and not dry else SUBSET
    argv = [
        "--dataset",
        str(data),
        "--output_dir",
        str(out / "cifar10_run"),
        "--overwrite_output_dir",
        "true",
    ]
    argv += ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    if dry:
        argv += [
            "--max_steps",
            "2",
            "--max_eval_samples",
            "64",
            "--per_device_train_batch_size",
            "8",
            "--use_cpu",
            "true",
        ]
    else:
        argv += [
            "--num_train_epochs",
            "2",
            "--per_device_train_batch_size",
            "128",
            "--dataloader_num_workers",
            "8",
        ]
    spec = importlib.util.spec_from_file_location("recipe_distill", REPO / "recipes" / "distill.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    start = time.perf_counter()
    results = recipe.main(argv)
    accuracy = results.get("eval_accuracy")
    return {
        "dataset": str(data),
        "seconds": time.perf_counter() - start,
        "results": results,
        # 2 epochs of CIFAR-10 from a trained teacher: far above chance (0.1), or something is broken
        "sanity": None if dry else (accuracy is not None and accuracy > 0.5),
    }


#: in the order they run: the longest (throughput, compiling in its last configuration) last
PARTS = {"cuda_tests": cuda_tests, "precision": precision, "cifar10": cifar10, "throughput": throughput_part}


def memory_peaks(parts: dict) -> dict[str, float]:
    """Peak memory of every precision run and throughput row (MB: allocated on GPU, resident on CPU)."""
    peaks = {}
    for key, run in parts.get("precision", {}).get("runs", {}).items():
        if "peak_mb" in run:
            peaks[f"precision/{key}"] = run["peak_mb"]
    for name, result in parts.get("throughput", {}).items():
        for row in result.get("rows", []):
            if "peak_mb" in row:
                peaks[f"throughput/{name}/{row['method']}"] = row["peak_mb"]
    return peaks


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder for the JSON files")
    ap.add_argument(
        "--dry_run", action="store_true", help="tiny sizes on the CPU (the default without a GPU)"
    )
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = Sizes(dry)
    summary = {
        "dry_run": dry,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not dry else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "parts": {},
    }
    results = {}
    for name in args.parts.split(","):
        start = time.perf_counter()
        try:
            results[name] = PARTS[name](out, sizes, dry)
            status = "ok"
        except Exception as e:  # one broken part must not hide the others' figures
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            status = "error"
        (out / f"{name}.json").write_text(
            json.dumps({"dry_run": dry, **results[name]}, indent=1, default=str) + "\n"
        )
        summary["parts"][name] = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
        summary["memory_peaks_mb"] = memory_peaks(results)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")  # after every part
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
