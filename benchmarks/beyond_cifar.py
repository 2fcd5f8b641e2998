#!/usr/bin/env python
"""A worked example beyond 32 px: timm teacher trained here, distilled into a smaller timm student at 96 px, beside
the same student trained alone; accuracy, wall time, images/s and the load average of each phase.

    python benchmarks/beyond_cifar.py                     # the recorded run (docs/beyond_cifar.md), ~1 h on 2 CPUs
    python benchmarks/beyond_cifar.py --phases kd         # redo one phase (the teacher folder is kept in --work_dir)
    python benchmarks/beyond_cifar.py --per_class 20 --epochs 1 --eval_samples 200 --results /tmp/quick.json

Data: the first ``--per_class`` training images of each CIFAR-10 class (JPEG rows of ../shared/data/cifar10, the
rows :func:`benchmarks.accuracy.class_balanced_subset` picks) and the first ``--eval_samples`` rows of the test
split, upsampled to ``--image_size`` by each model's own timm pipeline (RandomResizedCrop, flip, colour jitter for
training; resize to size / crop_pct and center crop for evaluation: docs/preprocessing.md).

Phases, each one ``hf_distill.distill(*parse_args(argv, {}))`` call (the recipe's flags, without the recipe's
embedded defaults; each phase's ``argv`` is in the results file, folders as ``$DATA`` and ``$WORK``):

1. ``teacher``: the teacher architecture trained from random weights with ``--method none``, saved to
   ``<work_dir>/teacher``;
2. ``baseline``: the student trained alone (what ``--baseline`` trains: ``--method none``, no teacher, everything
   else the same);
3. ``kd``: the student distilled from that folder with ``--method kd`` (the library's defaults).

Each phase is timed on its own; the load average is sampled while it runs. After the phases, one dataloader worker's
images/s (the student's training transform on the JPEG rows, one thread) and the floating-point work per image (torch's
FlopCounterMode) are measured, from which the results file derives what a GPU user can expect (an estimate, said so).

The numbers are a small-budget demonstration on a shared CPU, not a benchmark: few images, few epochs, one seed.
The results file is rewritten after every phase; a rerun with the same settings keeps the phases it does not redo.
"""

from __future__ import annotations

import os

# Before torch starts OpenMP (recipes/distill.py does the same): waiting threads sleep beside other busy processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

import hf_distill  # noqa: E402
from benchmarks.accuracy import _git_commit, _hardware, class_balanced_subset, data_fingerprint  # noqa: E402
from benchmarks.accuracy_report import splice  # noqa: E402
from hf_distill.console import LOG_FORMAT, exit_on_bad_input  # noqa: E402
from hf_distill.run.config import parse_args  # noqa: E402

PHASES = ("teacher", "baseline", "kd")
RESULTS = REPO / "benchmarks" / "results" / "beyond_cifar.json"
DOC = REPO / "docs" / "beyond_cifar.md"
#: the markers of the generated table in :data:`DOC`
START = "<!-- beyond-cifar:start -->\n"
END = "<!-- beyond-cifar:end -->"
DEFAULT_CACHE = Path.home() / ".cache" / "hf_distill" / "benchmarks"
#: seconds between two load-average samples while a phase runs
LOAD_INTERVAL = 10.0
#: dataloader workers assumed for the GPU estimate (a common setting on a GPU node; one core each)
GPU_LOADER_WORKERS = 8
#: backward ~ 2 forwards: the usual approximation for a training step's work (forward + backward = 3 forwards)
TRAIN_FORWARDS = 3
NOTE = (
    "A small-budget demonstration on a shared 2-core CPU (few images, few epochs, one seed), not a benchmark: "
    "the accuracies are far below what these models reach with full data and schedules, and the times depend on "
    "the load recorded beside them."
)


@dataclass(frozen=True)
class Example:
    """What the example trains (every field is recorded in the results file; a rerun keeps phases only when they
    all agree)."""

    teacher: str = "resnet10t"
    student: str = "mobilenetv3_small_100"
    image_size: int = 96
    per_class: int = 250
    eval_samples: int = 2000
    teacher_epochs: float = 6
    student_epochs: float = 6
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    method: str = "kd"
    seed: int = 0
    #: a cap on the optimizer steps of each phase (the dry-path test: 1); None: the epochs decide
    max_steps: int | None = None

    def arguments(self, phase: str, data_dir: str, work_dir: Path) -> dict[str, Any]:
        """The recipe's arguments of ``phase`` (``teacher``, ``baseline`` or ``kd``)."""
        student = self.teacher if phase == "teacher" else self.student
        args: dict[str, Any] = {"student": student, "method": "none"}
        if phase == "kd":
            args = {"teacher": str(work_dir / "teacher"), "student": student, "method": self.method}
        args |= {
            "dataset": data_dir,
            "image_size": self.image_size,
            "max_eval_samples": self.eval_samples,
            "num_train_epochs": self.teacher_epochs if phase == "teacher" else self.student_epochs,
            "per_device_train_batch_size": self.batch_size,
            "per_device_eval_batch_size": 128,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps,
            "lr_scheduler_type": "cosine",
            "seed": self.seed,
            "output_dir": str(work_dir / phase),
            "overwrite_output_dir": "true",
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": str(torch.cuda.is_available()).lower(),
            "eval_strategy": "no",
            "save_strategy": "no",
            "logging_strategy": "epoch",
            "report_to": "none",
            "disable_tqdm": "true",
        }
        if self.max_steps is not None:
            args["max_steps"] = self.max_steps
        return args


def argv_of(args: dict[str, Any]) -> list[str]:
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def portable(args: dict[str, Any], placeholders: dict[str, str]) -> str:
    """``args`` as one command-line string with the machine's own folders written as the ``placeholders``
    (``{"/home/me/.cache/...": "$DATA"}``): the results file holds no local path."""
    text = " ".join(argv_of(args))
    for path, name in placeholders.items():
        text = text.replace(path, name)
    return text


class LoadSampler:
    """The 1-minute load average, sampled every ``interval`` seconds in a background thread while in use."""

    def __init__(self, interval: float = LOAD_INTERVAL) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples
        return {
            "before": round(s[0], 2),
            "mean": round(sum(s) / len(s), 2),
            "max": round(max(s), 2),
            "after": round(s[-1], 2),
        }


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def run_phase(example: Example, phase: str, data_dir: str, work_dir: Path) -> dict[str, Any]:
    """Train and evaluate one phase through ``hf_distill.distill``; its row (accuracy, times, images/s, load)."""
    args = example.arguments(phase, data_dir, work_dir)
    parsed = parse_args(argv_of(args), {})
    t0 = time.perf_counter()
    with LoadSampler() as load:
        results = hf_distill.distill(*parsed)
    wall = time.perf_counter() - t0
    out = Path(args["output_dir"])
    final = next(
        r for r in reversed(_read_json(out / "trainer_state.json")["log_history"]) if "train_runtime" in r
    )
    evaluation = _read_json(out / "eval_results.json")
    train_rows = pq.ParquetFile(Path(data_dir) / "train.parquet").metadata.num_rows
    return {
        "model": args["student"],
        "method": args["method"],
        "teacher": example.teacher if "teacher" in args else None,
        # what hf_distill.distill(*parse_args(arguments.split(), {})) ran (the recipe's defaults not applied)
        "arguments": portable(args, {data_dir: "$DATA", str(work_dir): "$WORK"}),
        "top1": results.get("eval_accuracy"),
        "top5": results.get("eval_top5_accuracy"),
        "teacher_top1": results.get("eval_teacher_accuracy"),
        "objective": _read_json(out / "all_results.json").get("objective"),
        "wall_seconds": round(wall, 1),
        "train_seconds": round(final["train_runtime"], 1),
        "train_images_per_s": round(final["train_samples_per_second"], 2),
        "eval_seconds": evaluation.get("eval_runtime"),
        "eval_images_per_s": evaluation.get("eval_samples_per_second"),
        "train_rows": train_rows,
        "epochs": args["num_train_epochs"],
        "steps": final.get("step"),
        "threads": torch.get_num_threads(),
        "load_average": load.summary(),
    }


def loader_rate(example: Example, data_dir: str, rows: int) -> dict[str, Any]:
    """One dataloader worker's images/s: JPEG decode + the student's timm training transform, one thread."""
    import datasets

    from hf_distill.data.transforms import model_pipeline
    from hf_distill.models.loading import load_model

    pipe = model_pipeline(load_model(example.student, num_labels=10), "timm", example.image_size)
    ds = datasets.load_dataset("parquet", data_files=str(Path(data_dir) / "train.parquet"), split="train")
    ds = ds.select(range(min(rows, len(ds))))
    image = next(c for c in ds.column_names if isinstance(ds.features[c], datasets.Image))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # a dataloader worker runs torch on one thread
    try:
        pipe.train(ds[0][image].convert("RGB"), 0)  # warm-up
        t0 = time.perf_counter()
        for i in range(len(ds)):
            pipe.train(ds[i][image].convert("RGB"), i)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)
    return {
        "rows": len(ds),
        "images_per_s_per_worker": round(len(ds) / seconds, 1),
        "transform": pipe.describe()["train"],
        "load_average": round(os.getloadavg()[0], 2),
    }


def forward_gflops(name: str, image_size: int) -> float:
    """GFLOPs of one forward pass of one image (torch's FlopCounterMode: convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    from hf_distill.models.loading import load_model

    model = load_model(name, num_labels=10).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(pixel_values=torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 1e9


def gpu_estimate(
    example: Example, phases: dict[str, Any], loader: dict[str, Any], gflops: dict[str, float]
) -> dict[str, Any]:
    """What a GPU user can expect, derived from the figures measured here (an estimate, not a measurement).

    On a GPU these models at this size are cheap; the step waits for the CPU-side loader (JPEG decode and
    augmentation), so the estimate is the measured images/s of one worker times :data:`GPU_LOADER_WORKERS` workers
    (each on a free core); the work per image says how far the compute is from being the limit.
    """
    per_worker = loader["images_per_s_per_worker"]
    loader_bound = per_worker * GPU_LOADER_WORKERS
    kd_step = gflops["teacher_forward"] + TRAIN_FORWARDS * gflops["student_forward"]
    out: dict[str, Any] = {
        "basis": (
            f"loader-bound: {per_worker} images/s of one dataloader worker measured here (JPEG decode + the "
            f"student's timm training transform, one thread, on this shared CPU) x {GPU_LOADER_WORKERS} workers; "
            "an estimate, not measured on a GPU"
        ),
        "loader_workers": GPU_LOADER_WORKERS,
        "loader_bound_images_per_s": round(loader_bound, 0),
        "kd_step_gflops_per_image": round(kd_step, 3),
        "compute_tflops_at_loader_bound": round(kd_step * loader_bound / 1e3, 3),
    }
    kd = phases.get("kd")
    if kd:
        images = kd["train_rows"] * float(kd["epochs"])
        out["kd_cpu_gflops_per_s"] = round(kd_step * kd["train_images_per_s"], 1)
        out["kd_train_seconds_at_loader_bound"] = round(images / loader_bound, 1)
        out["speedup_over_this_cpu"] = round(loader_bound / kd["train_images_per_s"], 1)
    return out


def summary(phases: dict[str, Any]) -> dict[str, Any]:
    def top1(phase: str) -> float | None:
        return phases.get(phase, {}).get("top1")

    base, kd = top1("baseline"), top1("kd")
    return {
        "teacher_top1": top1("teacher"),
        "baseline_top1": base,
        "kd_top1": kd,
        "kd_gain_points": None if base is None or kd is None else round(100 * (kd - base), 2),
        "total_wall_seconds": round(sum(p["wall_seconds"] for p in phases.values()), 1),
    }


def previous_phases(path: Path, definition: dict[str, Any]) -> dict[str, Any]:
    """The phases already in the results file when it was written with the same definition (else none)."""
    saved = _read_json(path)
    return dict(saved.get("phases", {})) if saved.get("definition") == definition else {}


def write_results(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def run(
    example: Example, source: Path, cache_dir: Path, work_dir: Path, results: Path, phases, loader_rows: int
) -> dict[str, Any]:
    """Prepare the data, run ``phases`` in order, measure the loader and the work per image; the record written."""
    for split in ("train", "test"):
        if not (source / f"{split}.parquet").exists():
            raise ValueError(
                f"{source} has no {split}.parquet: pass --source, a folder with the CIFAR-10 splits (img, label)."
            )
    data = str(class_balanced_subset(source, cache_dir / f"cifar10-{example.per_class}pc", example.per_class))
    if "kd" in phases and "teacher" not in phases and not (work_dir / "teacher" / "config.json").exists():
        raise ValueError(f"No trained teacher in {work_dir / 'teacher'}: run the teacher phase first.")
    definition = {**dataclasses.asdict(example), "data": data_fingerprint(data)}
    record: dict[str, Any] = {
        "note": NOTE,
        "definition": definition,
        "paths": {
            "$DATA": f"the training subset and test split: <--cache_dir>/cifar10-{example.per_class}pc",
            "$WORK": "--work_dir (default <--cache_dir>/beyond_cifar); $WORK/teacher is the trained teacher",
        },
        "phases": previous_phases(results, definition),
    }
    torch.manual_seed(example.seed)
    log = logging.getLogger("beyond_cifar")
    for phase in phases:
        log.info("phase %s", phase)
        record["phases"][phase] = run_phase(example, phase, data, work_dir)
        record["summary"] = summary(record["phases"])
        write_results(results, record)
        log.info("%s: %s", phase, {k: v for k, v in record["phases"][phase].items() if k != "arguments"})
    record["loader"] = loader_rate(example, data, loader_rows)
    gflops = {
        "teacher_forward": round(forward_gflops(example.teacher, example.image_size), 4),
        "student_forward": round(forward_gflops(example.student, example.image_size), 4),
    }
    record["gflops_per_image"] = gflops
    record["gpu_estimate"] = gpu_estimate(example, record["phases"], record["loader"], gflops)
    record["summary"] = summary(record["phases"])
    record["machine"] = {
        "hardware": _hardware(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hf_distill": hf_distill.__version__,
        "git_commit": _git_commit(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_results(results, record)
    return record


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown(record: dict[str, Any]) -> str:
    """The table of docs/beyond_cifar.md: one row a phase, then the gain and the GPU estimate."""
    d = record["definition"]
    lines = [
        "| phase | model | method | top-1 % | top-5 % | wall (min) | training (min) | training images/s | "
        "eval images/s | load average mean (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, r in record["phases"].items():
        load = r["load_average"]
        lines.append(
            f"| {phase} | `{r['model']}` | {r['method']} | {_pct(r['top1'])} | {_pct(r['top5'])} | "
            f"{r['wall_seconds'] / 60:.1f} | {r['train_seconds'] / 60:.1f} | {r['train_images_per_s']:.1f} | "
            f"{r['eval_images_per_s'] or 0:.1f} | {load['mean']:.1f} ({load['max']:.1f}) |"
        )
    s = record["summary"]
    kd = record["phases"].get("kd", {})
    lines += [
        "",
        f"{d['per_class']} training images per class at {d['image_size']} px, the first {d['eval_samples']} test "
        f"images, {d['teacher_epochs']:g} teacher epochs and {d['student_epochs']:g} student epochs, seed "
        f"{d['seed']}, {record.get('machine', {}).get('threads', '?')} torch threads on "
        f"{record.get('machine', {}).get('cpus', '?')} shared cores. Distillation against the student trained "
        f"alone: **{s['kd_gain_points']:+.1f} points** (one seed). The teacher, evaluated inside the KD run "
        f"through the student's eval crop: {_pct(kd.get('teacher_top1'))}%. All phases: "
        f"{s['total_wall_seconds'] / 60:.1f} min of wall time.",
    ]
    if "gpu_estimate" in record:
        g, loader = record["gpu_estimate"], record["loader"]
        lines += [
            "",
            f"Measured for the estimate: one dataloader worker delivers {loader['images_per_s_per_worker']:.0f} "
            f"images/s (decode + the student's training transform, one thread, load {loader['load_average']:.1f}); "
            f"a KD step costs {g['kd_step_gflops_per_image']:.2f} GFLOPs an image (teacher forward "
            f"{record['gflops_per_image']['teacher_forward']:.3f}, student forward "
            f"{record['gflops_per_image']['student_forward']:.3f}, backward counted as two forwards).",
            "",
            f"GPU estimate (not measured): the step would wait for the loader, {g['loader_bound_images_per_s']:.0f} "
            f"images/s with {g['loader_workers']} workers (the rate above x {g['loader_workers']}), "
            f"{g.get('speedup_over_this_cpu', 'n/a')}x the KD phase's images/s here; its training would take "
            f"~{g.get('kd_train_seconds_at_loader_bound', 'n/a')} s. The compute at that rate, "
            f"{g['compute_tflops_at_loader_bound']:.2f} TFLOP/s, is far below what a current GPU sustains.",
        ]
    return "\n".join(lines) + "\n"


def write_report(results: Path, doc: Path) -> None:
    """Write the table of ``results`` into ``doc`` between its markers.

    Raises:
        ValueError: no results file, or ``doc`` lacks the markers.
    """
    if not results.exists():
        raise ValueError(
            f"No results file {results}: run benchmarks/beyond_cifar.py first (or pass --results)."
        )
    record = json.loads(results.read_text())
    doc.write_text(
        splice(doc.read_text(encoding="utf-8"), START, END, markdown(record), doc), encoding="utf-8"
    )


def build_parser() -> argparse.ArgumentParser:
    d = Example()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=d.teacher, help="timm architecture of the teacher (trained here).")
    p.add_argument("--student", default=d.student, help="timm architecture of the student.")
    p.add_argument("--image_size", type=int, default=d.image_size)
    p.add_argument("--per_class", type=int, default=d.per_class, help="Training images per class.")
    p.add_argument("--eval_samples", type=int, default=d.eval_samples, help="First rows of the test split.")
    p.add_argument(
        "--epochs", type=float, default=None, help="Epochs of every phase (default: the two below)."
    )
    p.add_argument("--teacher_epochs", type=float, default=d.teacher_epochs)
    p.add_argument("--student_epochs", type=float, default=d.student_epochs)
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--max_steps", type=int, default=None, help="Cap on each phase's steps (a dry run: 1).")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--phases", default=",".join(PHASES), help=f"Comma list of {', '.join(PHASES)}.")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the phases.")
    p.add_argument("--loader_rows", type=int, default=500, help="Rows of the loader measurement.")
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "cifar10"))
    p.add_argument("--cache_dir", default=str(DEFAULT_CACHE), help="Where the data subset is written.")
    p.add_argument(
        "--work_dir", default=None, help="The phases' output folders (default <cache_dir>/beyond_cifar)."
    )
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument(
        "--report", action="store_true", help="Write the results file's table into --doc; train nothing."
    )
    p.add_argument("--doc", default=str(DOC))
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO)
    logging.getLogger("transformers").setLevel(logging.WARNING)
    a = build_parser().parse_args(argv)
    with exit_on_bad_input(ValueError):
        if a.report:
            write_report(Path(a.results), Path(a.doc))
            return json.loads(Path(a.results).read_text())
        phases = [p.strip() for p in a.phases.split(",") if p.strip()]
        unknown = [p for p in phases if p not in PHASES]
        if unknown or not phases:
            raise ValueError(f"--phases {a.phases!r}: pick from {', '.join(PHASES)}.")
        example = Example(
            teacher=a.teacher,
            student=a.student,
            image_size=a.image_size,
            per_class=a.per_class,
            eval_samples=a.eval_samples,
            teacher_epochs=a.teacher_epochs if a.epochs is None else a.epochs,
            student_epochs=a.student_epochs if a.epochs is None else a.epochs,
            batch_size=a.batch_size,
            learning_rate=a.learning_rate,
            seed=a.seed,
            max_steps=a.max_steps,
        )
        cache = Path(a.cache_dir)
        work = Path(a.work_dir) if a.work_dir else cache / "beyond_cifar"
        previous = torch.get_num_threads()
        torch.set_num_threads(a.threads)
        try:
            record = run(example, Path(a.source), cache, work, Path(a.results), [p for p in PHASES if p in phases],
                         a.loader_rows)  # fmt: skip
        finally:  # called from Python (the tests), the caller's thread count stays
            torch.set_num_threads(previous)
    print(json.dumps(record["summary"], indent=2))
    return record


if __name__ == "__main__":
    main()
