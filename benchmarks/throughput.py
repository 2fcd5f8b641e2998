#!/usr/bin/env python
"""Throughput of every method against the limit: the DistillationTrainer's step vs a bare training loop.

    python benchmarks/throughput.py                                    # every method and preset, 3 pairs
    python benchmarks/throughput.py --pairs resnet56-resnet20 --methods kd,crd,crd_kd --steps 20
    python benchmarks/throughput.py --methods kd --channels_last       # a speed option, measured the same way
    python benchmarks/throughput.py --pairs cifar_resnet8:cifar_resnet8 --methods kd --steps 3   # any teacher:student
    python benchmarks/throughput.py --render benchmarks/results/throughput.json   # the README's Speed section

The limit is what any distillation run must pay: a frozen teacher forward without grad, a student forward and
backward with cross-entropy and an SGD step (momentum 0.9, weight decay 5e-4), on the same batches in the same
process. The trainer's step is the ``DistillationTrainer``'s (``on_step_begin`` to ``on_step_end``: teacher,
student, the methods, backward, optimizer). Both are timed interleaved, one limit step after every trainer step
(ABAB), so that the load of a shared machine hits both alike; the limit's medians over the first and second half of
the run are reported (before/after) and the ratio uses the limit's median over the whole run. Warm-up steps are
excluded; the spread is the interquartile range relative to the median.

Data: synthetic CIFAR-shaped rows (a pool of random images, CIFAR-100 labels) with a 50,000-row index so that
memory banks have CIFAR's size; only speed is measured. Models are randomly initialized with CIFAR-100 heads.
Peak memory is the process's peak RSS over the method's run on CPU (reset per run through
``/proc/self/clear_refs``), ``max_memory_allocated`` on GPU. The method state is the bytes of the objective's
parameters and buffers (heads, memory banks). Writes a markdown table and a JSON file (``--out``).

Speed options (applied to the limit and the trainer alike, so the ratio stays a fair one; compare the images/s
columns between runs): ``--channels_last``, ``--teacher_bf16`` (the teacher's forward under bfloat16 autocast),
``--compile`` (``torch.compile`` of student and teacher; limit loop only, the trainer's taps are not compiled).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback, TrainingArguments

from hf_distill import DistillationTrainer
from hf_distill.data.datasets import collate
from hf_distill.features import FeatureNeeds, Features
from hf_distill.methods import METHODS, PRESETS, DistillationObjective, resolve_selectors
from hf_distill.models.loading import load_model
from hf_distill.models.normalization import TeacherInput, input_spec
from hf_distill.models.taps import feature_tap
from hf_distill.training.mutual import MUTUAL

NUM_CLASSES = 100
TRAIN_ROWS = 50_000

#: pair name -> (teacher, student), as load_model names them; the timm pair runs at CIFAR's 32x32
PAIRS = {
    "resnet56-resnet20": ("cifar_resnet56", "cifar_resnet20"),
    "resnet32x4-resnet8x4": ("cifar_resnet32x4", "cifar_resnet8x4"),
    "timm-resnet18-mobilenetv3": ("resnet18", "mobilenetv3_small_100"),
}
#: per-method settings of the benchmark: CRD in its faithful mode, init stages left out (main-stage step only)
METHOD_KWARGS = {"crd": {"nce_k": 16384, "negatives": "bank", "mode": "exact"}}


class SyntheticRows(torch.utils.data.Dataset):
    """``rows`` CIFAR-shaped training rows: a small pool of random images, fixed random labels, the row index."""

    def __init__(
        self, rows: int = TRAIN_ROWS, num_classes: int = NUM_CLASSES, size: int = 32, pool: int = 256
    ):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(pool, 3, size, size, generator=g)
        self.labels = torch.randint(0, num_classes, (rows,), generator=g)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i % len(self.images)], "labels": int(self.labels[i]), "index": i}


@dataclass
class Options:
    """Speed options, applied to the limit and the trainer alike."""

    channels_last: bool = False
    teacher_bf16: bool = False
    compile: bool = False


def load_pair(pair: str, options: Options) -> tuple[nn.Module, nn.Module]:
    """Randomly initialized teacher and student with CIFAR-100 heads (timm ones set to a 32x32 input)."""
    t_name, s_name = PAIRS[pair] if pair in PAIRS else pair.split(":")
    torch.manual_seed(0)
    teacher = load_model(t_name, num_labels=NUM_CLASSES, role="teacher")
    student = load_model(s_name, num_labels=NUM_CLASSES)
    for m in (teacher, student):
        tm = getattr(m, "timm_model", None)
        if tm is not None:
            tm.pretrained_cfg = {**tm.pretrained_cfg, "input_size": (3, 32, 32)}
    calibrate_batchnorm(teacher, SyntheticRows(rows=256).images)
    teacher.eval().requires_grad_(False)
    if options.channels_last:
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
    return teacher, student


def calibrate_batchnorm(model: nn.Module, images: Tensor, batch: int = 64) -> None:
    """Set a random network's BatchNorm running statistics from ``images``, as training sets a teacher's.

    Freshly initialized statistics (mean 0, variance 1) make a deep network in eval mode amplify its activations at
    every block: a random resnet56's embedding overflows, and the gradients of methods that read it (CC) with it.
    Speed does not depend on the values, but a run that stops on a non-finite gradient measures nothing.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(images[i : i + batch])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def _prepare(x: Tensor, options: Options) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last else x


def teacher_autocast(x: Tensor, options: Options) -> torch.autocast:
    """bfloat16 autocast of the teacher's forward with ``--teacher_bf16`` (a no-op context otherwise)."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=options.teacher_bf16)


class Limit:
    """The bare loop: teacher forward (no grad) + student forward/backward with CE + SGD step."""

    def __init__(
        self, teacher: nn.Module, student: nn.Module, options: Options, device: torch.device
    ) -> None:
        self.teacher = teacher
        self.student = copy.deepcopy(student).to(device).train()
        self.adapter = TeacherInput(input_spec(student), input_spec(teacher)).to(device)
        self.options = options
        self.opt = torch.optim.SGD(self.student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.t_fwd, self.s_fwd = self.teacher, self.student
        if options.compile:
            self.t_fwd, self.s_fwd = torch.compile(self.teacher), torch.compile(self.student)

    def step(self, batch: dict[str, Tensor]) -> None:
        x, y = batch["pixel_values"], batch["labels"]
        with torch.no_grad(), teacher_autocast(x, self.options):
            self.t_fwd(_prepare(self.adapter(x), self.options))
        logits = self.s_fwd(_prepare(x, self.options)).logits
        nn.functional.cross_entropy(logits, y).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class ReferenceLimit(Limit):
    """The limit step, then a reference implementation's step of the method on the same batch, each timed alone.

    ``reference(limit)`` builds the reference's step (a callable on a batch) from this limit's networks; it keeps
    its own copy of the student. Both steps run after every trainer step, so load hits all three alike.
    """

    def __init__(self, teacher, student, options, device, reference: Callable[[Limit], Callable]) -> None:
        super().__init__(teacher, student, options, device)
        self.reference_step = reference(self)
        self.limit_times: list[float] = []
        self.reference_times: list[float] = []

    def step(self, batch: dict[str, Tensor]) -> None:
        device = batch["pixel_values"].device
        for fn, times in ((super().step, self.limit_times), (self.reference_step, self.reference_times)):
            _sync(device)
            t = time.perf_counter()
            fn(batch)
            _sync(device)
            times.append(time.perf_counter() - t)


class ReferenceStep:
    """A reference implementation's training step, as its own code would run it beside the limit's networks.

    Teacher forward (no grad) reading ``teacher_needs``, student forward reading ``student_needs`` (its own copy of
    the limit's student), cross-entropy plus the reference's loss, backward, and one SGD step over the student and
    the loss's trainable parameters (the limit's settings). ``build_loss(student_features, teacher_features)`` makes
    the loss module from a dry run's features; it is called as ``loss(student_features, teacher_features, batch)``.
    """

    def __init__(
        self,
        limit: Limit,
        student_needs: FeatureNeeds,
        teacher_needs: FeatureNeeds,
        build_loss: Callable[[Features, Features], nn.Module],
    ) -> None:
        device = next(limit.student.parameters()).device
        self.student = copy.deepcopy(limit.student)
        self.teacher, self.adapter = limit.teacher, limit.adapter
        self.s_tap, self.t_tap = feature_tap(self.student), feature_tap(self.teacher)
        self.s_needs = replace(
            student_needs,
            logits=True,
            maps=tuple(resolve_selectors(student_needs.maps, self.s_tap.names, "student")),
        )
        self.t_needs = replace(
            teacher_needs, maps=tuple(resolve_selectors(teacher_needs.maps, self.t_tap.names, "teacher"))
        )
        with torch.no_grad():
            s, t = self.features(torch.zeros(2, 3, 32, 32, device=device), dry_run=True)
        self.loss = build_loss(s, t).to(device)
        params = [p for p in (*self.student.parameters(), *self.loss.parameters()) if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)

    def features(self, x: Tensor, dry_run: bool = False) -> tuple[Features, Features]:
        self.student.train(not dry_run)
        with torch.no_grad():
            t = self.t_tap(self.teacher, self.adapter(x), self.t_needs)
        return self.s_tap(self.student, x, self.s_needs), t

    def __call__(self, batch: dict[str, Tensor]) -> None:
        s, t = self.features(batch["pixel_values"])
        loss = nn.functional.cross_entropy(s.logits, batch["labels"]) + self.loss(s, t, batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class LastBatch:
    """The collator, remembering its last batch: the limit steps run on the trainer's own batches."""

    def __init__(self) -> None:
        self.batch: dict[str, Tensor] | None = None

    def __call__(self, rows: list[dict]) -> dict[str, Tensor]:
        self.batch = collate(rows)
        return self.batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Interleave(TrainerCallback):
    """Times every trainer step, then runs and times one limit step on the same batch (ABAB)."""

    def __init__(
        self, limit: Limit, batches: LastBatch, device: torch.device, progress: tqdm | None = None
    ) -> None:
        self.limit, self.batches, self.device = limit, batches, device
        self.progress = progress
        self.trainer_times: list[float] = []
        self.limit_times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        _sync(self.device)
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync(self.device)
        self.trainer_times.append(time.perf_counter() - self._t)
        batch = {k: v.to(self.device) for k, v in self.batches.batch.items()}
        t = time.perf_counter()
        self.limit.step(batch)
        _sync(self.device)
        self.limit_times.append(time.perf_counter() - t)
        if self.progress is not None:
            self.progress.update()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the kernel's peak RSS (Linux ``clear_refs``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak then covers the whole process so far


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory, or peak resident set size on CPU, since :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def state_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def summarize(times: list[float]) -> dict[str, float]:
    """Median and interquartile range relative to the median."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    med = statistics.median(times)
    return {"median_s": med, "iqr_rel": (q[2] - q[0]) / med}


@dataclass
class Row:
    """One method on one pair: trainer vs limit."""

    pair: str
    method: str
    kind: str  # "logit" (logits only), "feature" or "preset"
    limit_img_s: float
    limit_before_img_s: float
    limit_after_img_s: float
    trainer_img_s: float
    ratio: float
    trainer_iqr: float
    limit_iqr: float
    peak_mb: float
    state_mb: float
    steps: int
    extra: dict = field(default_factory=dict)


def method_kind(name: str) -> str:
    if name in PRESETS:
        return "preset"
    needs = METHODS[name]().needs()
    return "logit" if not (needs.student.embedding or needs.student.maps or needs.teacher.maps) else "feature"


def progress_bar(total: int, desc: str) -> tqdm:
    """A progress bar on stderr, quiet when stderr is not a terminal (a log file, a pipe, the tests)."""
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stderr.isatty(), dynamic_ncols=True)


def run_method(
    pair: str,
    name: str,
    args: argparse.Namespace,
    options: Options,
    device: torch.device,
    limit_class: Callable[..., Limit] = Limit,
) -> Row:
    """One method on one pair, timed against the limit (``limit_class``: a :class:`Limit` that may time more)."""
    teacher, student = load_pair(pair, options)
    methods = [m for m, _ in PRESETS[name].methods] if name in PRESETS else [name]
    kwargs = {m: dict(METHOD_KWARGS[m]) for m in methods if m in METHOD_KWARGS}
    objective = DistillationObjective.from_names(name, method_kwargs=kwargs)
    data = SyntheticRows(args.rows)
    batches = LastBatch()
    limit = limit_class(teacher.to(device), student, options, device)
    timer = Interleave(limit, batches, device)
    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        objective=objective,
        args=TrainingArguments(
            output_dir=f"/tmp/hf_distill_throughput/{name}",
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            learning_rate=0.05,
            optim="sgd",
            optim_args="momentum=0.9",
            weight_decay=5e-4,
            max_grad_norm=0.0,  # the limit does not clip either
            logging_steps=10**6,
            save_strategy="no",
            report_to="none",
            use_cpu=device.type == "cpu",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        ),
        train_dataset=data,
        data_collator=batches,
        callbacks=[timer],
        report_teacher_accuracy=False,
        channels_last=options.channels_last,
        teacher_precision="bf16" if options.teacher_bf16 else "same",
    )
    trainer.remove_callback(PrinterCallback)
    # main-stage step only: the methods' initialization stages (AB, FT, FSP, IE-KD) are marked done and their
    # end hooks run, so a pretrained part is frozen (eval mode, out of the optimizer) as in a real main stage
    objective = trainer.model.objective
    for m in objective.init_stage_methods():
        objective.methods[m].on_init_stage_end()
    trainer.model.init_stage_done.fill_(True)
    reset_peak_memory(device)
    with progress_bar(args.warmup + args.steps, f"{pair} {name}") as timer.progress:
        trainer.train()
    peak = peak_memory_mb(device)
    w, b = args.warmup, args.batch_size
    tr, lim = timer.trainer_times[w:], timer.limit_times[w:]
    half = len(lim) // 2
    t_sum, l_sum = summarize(tr), summarize(lim)
    return Row(
        pair=pair,
        method=name,
        kind=method_kind(name),
        limit_img_s=b / l_sum["median_s"],
        limit_before_img_s=b / statistics.median(lim[: max(half, 1)]),
        limit_after_img_s=b / statistics.median(lim[half:]),
        trainer_img_s=b / t_sum["median_s"],
        ratio=t_sum["median_s"] / l_sum["median_s"],
        trainer_iqr=t_sum["iqr_rel"],
        limit_iqr=l_sum["iqr_rel"],
        peak_mb=peak,
        state_mb=state_bytes(trainer.model.objective) / 2**20,
        steps=len(tr),
    )


def compare_with_reference(
    pair: str, name: str, reference: Callable[[Limit, argparse.Namespace], Callable], args: argparse.Namespace
) -> dict:
    """The method's trainer step, the limit and a reference implementation's step, timed in turn on the same batches.

    ``reference(limit, args)`` builds the reference's step. Returns the medians (seconds), their spreads
    (interquartile range / median), the ratios trainer / limit, reference / limit and trainer / reference, and the
    load average before and after.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    made: list[ReferenceLimit] = []

    def limit_class(*a) -> ReferenceLimit:
        made.append(ReferenceLimit(*a, reference=lambda limit: reference(limit, args)))
        return made[-1]

    load_before = os.getloadavg()[0]
    row = run_method(pair, name, args, Options(), device, limit_class)
    w = args.warmup
    stats = {k: summarize(getattr(made[0], f"{k}_times")[w:]) for k in ("limit", "reference")}
    trainer = args.batch_size / row.trainer_img_s
    limit, ref = stats["limit"]["median_s"], stats["reference"]["median_s"]
    return {
        "pair": pair,
        "method": name,
        "batch_size": args.batch_size,
        "steps": row.steps,
        "device": environment(device)["device"],
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "limit_s": round(limit, 4),
        "reference_s": round(ref, 4),
        "trainer_s": round(trainer, 4),
        "spread": {
            "limit": round(stats["limit"]["iqr_rel"], 3),
            "reference": round(stats["reference"]["iqr_rel"], 3),
            "trainer": round(row.trainer_iqr, 3),
        },
        "trainer_over_limit": round(trainer / limit, 3),
        "reference_over_limit": round(ref / limit, 3),
        "trainer_over_reference": round(trainer / ref, 3),
    }


def reference_main(
    name: str,
    reference: Callable[[Limit, argparse.Namespace], Callable],
    doc: str,
    argv: list[str] | None = None,
    extra: Callable[[argparse.Namespace], dict] | None = None,
) -> dict:
    """The command line of a ``benchmarks/<method>_reference.py`` script: run :func:`compare_with_reference`, add
    ``extra(args)``'s entries, print the JSON and write it to ``--out``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--pair", default="timm-resnet18-mobilenetv3", help=f"one of {', '.join(PAIRS)}")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--rows", type=int, default=TRAIN_ROWS, help="training-set size")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is steadier on a shared machine)"
    )
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    if args.pair not in PAIRS:
        ap.error(f"unknown pair {args.pair!r}: choose from {', '.join(PAIRS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = compare_with_reference(args.pair, name, reference, args)
    result.update(extra(args) if extra is not None else {})
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


TARGETS = {"logit": 1.05, "feature": 1.25, "preset": 1.25}


def reference_markdown(results: dict) -> str:
    """The reference-step comparisons (``benchmarks/<method>_reference.py --out``, collected under ``"runs"``) as one
    table: each method's trainer step and a reference implementation's step, both against the same limit."""
    lines = [
        "| method | pair | limit s | reference s | ours s | reference / limit | ours / limit | ours / reference "
        "| spread (limit / ref. / ours) | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        spread = " / ".join(f"{r['spread'][k]:.0%}" for k in ("limit", "reference", "trainer"))
        load = "-".join(f"{v:.1f}" for v in r["load"])
        lines.append(
            f"| {r['method']} | {r['pair']} | {r['limit_s']:.3f} | {r['reference_s']:.3f} | {r['trainer_s']:.3f} | "
            f"{r['reference_over_limit']:.2f}x | {r['trainer_over_limit']:.2f}x | {r['trainer_over_reference']:.2f}x "
            f"| {spread} | {load} |"
        )
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    """The results as one markdown table per pair, with the run's conditions above."""
    env = result["environment"]
    lines = [
        f"Batch {result['batch_size']}, {result['steps']} timed steps after {result['warmup']} warm-up, "
        f"{env['device']}, torch {env['torch']}, load average {env['load_before']} before / {env['load_after']} "
        f"after; options: {', '.join(k for k, v in result['options'].items() if v) or 'none'}.",
        "",
    ]
    for pair in dict.fromkeys(r["pair"] for r in result["rows"]):
        # runs merged from separate processes keep each pair's own conditions
        penv = result.get("pair_environments", {}).get(pair)
        measured = (
            f" measured in its own run: load average {penv['load_before']} before / {penv['load_after']} after"
            if penv
            else ""
        )
        lines += [
            f"**{pair}** (teacher -> student){measured}",
            "",
            "| method | limit img/s (before / after) | trainer img/s | ratio | target | spread (trainer / limit) "
            "| peak memory (MB) | method state (MB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in result["rows"] if r["pair"] == pair):
            if "skipped" in r:
                lines.append(f"| {r['method']} | not applicable: {r['skipped']} | | | | | | |")
                continue
            target = TARGETS[r["kind"]]
            verdict = "met" if r["ratio"] <= target else "missed"
            note = (r.get("extra") or {}).get("note")  # e.g. a row re-measured in a later run
            lines.append(
                f"| {r['method']}{f' ({note})' if note else ''} | {r['limit_img_s']:.1f} ({r['limit_before_img_s']:.1f} / "
                f"{r['limit_after_img_s']:.1f}) | {r['trainer_img_s']:.1f} | {r['ratio']:.2f}x "
                f"| {target:.2f}x {verdict} | {100 * r['trainer_iqr']:.0f}% / {100 * r['limit_iqr']:.0f}% "
                f"| {r['peak_mb']:.0f} | {r['state_mb']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    )
    return {
        "device": f"{device.type} ({name}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "load_before": round(os.getloadavg()[0], 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--methods", default=None, help="comma list (default: every registered method and preset)"
    )
    ap.add_argument(
        "--pairs", default=",".join(PAIRS), help=f"comma list of {', '.join(PAIRS)} or teacher:student names"
    )
    ap.add_argument("--steps", type=int, default=20, help="timed steps per method (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is steadier on a shared machine)"
    )
    ap.add_argument(
        "--rows", type=int, default=TRAIN_ROWS, help="training-set size (CRD's bank has one row each)"
    )
    ap.add_argument("--channels_last", action="store_true")
    ap.add_argument("--teacher_bf16", action="store_true")
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile student and teacher (limit loop only)"
    )
    ap.add_argument("--out", default=None, help="write the JSON here (and the markdown next to it, .md)")
    ap.add_argument("--render", default=None, help="print the markdown of a saved JSON result and exit")
    args = ap.parse_args(argv)
    unknown = [p for p in args.pairs.split(",") if p not in PAIRS and p.count(":") != 1]
    if unknown:
        ap.error(
            f"unknown pair {unknown[0]!r}: choose from {', '.join(PAIRS)}, or name one as teacher:student"
        )
    names = args.methods.split(",") if args.methods else all_methods()
    bad = [n for n in names if n not in METHODS and n not in PRESETS]
    if bad:
        ap.error(f"unknown method {bad[0]!r}: choose from {', '.join(all_methods())}")
    args.names = names
    if args.steps < 2 or args.warmup < 0:
        ap.error("--steps must be >= 2 and --warmup >= 0")
    return args


def all_methods() -> list[str]:
    """Every method and preset but mutual learning, whose peers the bare-loop limit does not run."""
    return sorted(m for m in (*METHODS, *PRESETS) if not m.startswith("test_") and m not in MUTUAL)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        print(markdown(result), end="")
        return result
    if args.threads:
        torch.set_num_threads(args.threads)
    options = Options(args.channels_last, args.teacher_bf16, args.compile)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "rows_in_training_set": args.rows,
        "options": asdict(options),
        "environment": environment(device),
        "rows": [],
    }
    runs = [(pair, name) for pair in args.pairs.split(",") for name in args.names]
    for pair, name in tqdm(runs, desc="methods", disable=not sys.stderr.isatty(), dynamic_ncols=True):
        try:
            row = asdict(run_method(pair, name, args, options, device))
        except ValueError as e:
            # the method does not apply to the pair (a timm student has no pre-activation maps)
            row = {
                "pair": pair,
                "method": name,
                "kind": method_kind(name),
                "skipped": str(e).split(": ")[0],
            }
        result["rows"].append(row)
        result["environment"]["load_after"] = round(os.getloadavg()[0], 1)
        save(result, args.out)  # after every method: a long run killed midway keeps what it measured
    print(markdown(result))
    return result


def save(result: dict, out: str | None) -> None:
    """Write the JSON and, next to it, its markdown (``.md``)."""
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        path.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
