#!/usr/bin/env python
"""Accuracy of every distillation method against the no-distillation baseline, over seeds, on real data.

    python benchmarks/accuracy.py                                  # CIFAR-10 CPU protocol, the README's run order
    python benchmarks/accuracy.py --methods none,kd --seeds 0,1,2  # some methods and seeds
    python benchmarks/accuracy.py --epoch_curve 10,20,30,40        # the baseline vs the epoch budget (protocol choice)
    python benchmarks/accuracy.py --student cifar_mobilenetv2      # another student (a heterogeneous pair)
    python benchmarks/accuracy.py --report                         # docs/results.md table + bar chart, from the file
    python benchmarks/accuracy.py --mode cifar100 --dataset uoft-cs/cifar100 --teacher outputs/cifar100/teachers/resnet56

CIFAR-10 CPU protocol (``--mode cifar10``): the first 500 training images of each class of the full JPEG CIFAR-10
training split (5,000, the same rows as ``assets/cifar10-subset``), the full 10,000-image test split; teacher
``assets/teachers/cifar10-resnet56-jpeg``; student ``cifar_resnet20`` from scratch; SGD lr 0.05, momentum 0.9,
weight decay 5e-4, cosine schedule, batch 64, :data:`CIFAR10_EPOCHS` epochs (the budget at which the baseline has
plateaued, measured with ``--epoch_curve``: see the README's Results section). Every method and preset runs at its
default weights and hyperparameters, except the epoch-valued ones (initialization stages, warm-ups), which are given
in the papers for 240 epochs and are scaled to the same fraction of this budget (``x epochs / 240``). The student is
evaluated once, after training, on the 10,000 test images (top-1 and top-5). ``--student`` (a CIFAR-zoo or timm name,
or a model folder) and ``--teacher`` (a model folder) replace the pair; both are protocol fields, so such rows get their
own protocol hash and never mix with the ``cifar_resnet20`` rows.

CIFAR-100 mode (``--mode cifar100``, for a GPU): each method's ``recipes/configs/cifar100/<method>/<pair>.yaml`` (built in memory when absent)
(methods without a config: the ``none`` config with ``--method`` and the ``kd`` config's teacher), same reporting.

Each finished run appends one JSON line to the results file, keyed by (method, seed, protocol hash, code version,
data fingerprint); an interrupted run writes nothing and a rerun skips the finished keys, so the table grows over
several interrupted sessions. The protocol hash covers every protocol setting and the teacher's weights; the code
version is ``hf_distill.__version__`` plus :data:`BENCH_REVISION` (bump either when results would change).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import hf_distill  # noqa: E402
from hf_distill.console import LOG_FORMAT, exit_on_bad_input  # noqa: E402
from hf_distill.methods import METHODS, PRESETS, resolve_objective  # noqa: E402
from hf_distill.run.baseline import build_baseline, train_and_evaluate  # noqa: E402
from hf_distill.run.benchmark_configs import BENCHMARK, benchmark_config, benchmark_names, render  # noqa: E402
from hf_distill.run.build import build_run  # noqa: E402
from hf_distill.run.config import parse_args  # noqa: E402
from hf_distill.training.teacher_cache import TeacherCache  # noqa: E402

#: bump when the runner changes results (with ``hf_distill.__version__``: the rows' code version)
BENCH_REVISION = 1
#: the CIFAR-10 CPU protocol's epoch budget (chosen with ``--epoch_curve``; README, Results)
CIFAR10_EPOCHS = 40
#: the budget the papers' epoch-valued hyperparameters are given for (RepDistiller: 240 epochs)
PAPER_EPOCHS = 240
#: method hyperparameters counted in epochs, scaled with the budget
EPOCH_HYPERPARAMETERS = ("init_epochs", "warmup_epochs")
#: the run order of a full job: the baseline, then the methods most asked about, then the rest
FIRST_METHODS = ("none", "kd", "dkd", "crd_kd", "icd_kd", "cskd", "skd", "iekd_kd")
DEFAULT_SEEDS = (0, 1, 2)
#: training arguments a method's own documentation prescribes, given to its runs in both modes and recorded in their
#: rows: mutual learning clips the norm of all networks together, which cost DML 3-6 points at the default limit of 1
#: (README, Mutual learning), so its runs train unclipped
METHOD_TRAINING_ARGS: dict[str, dict[str, str]] = {
    "dml": {"max_grad_norm": "0"},
    "dml_ie": {"max_grad_norm": "0"},
}
RESULTS = REPO / "benchmarks" / "results"
TEACHER = "teacher"  # the key of the teacher's own accuracy row
BASELINE = "none"


def code_version() -> str:
    return f"{hf_distill.__version__}+bench{BENCH_REVISION}"


def all_methods() -> list[str]:
    """Every registered method and preset, in run order: :data:`FIRST_METHODS` first, then alphabetical."""
    names = [BASELINE, *sorted(METHODS), *sorted(PRESETS)]
    return list(dict.fromkeys([m for m in FIRST_METHODS if m in names] + names))


def split_variant(method: str) -> tuple[str, dict[str, str]]:
    """``"kd[temperature=2,logit_standardization=true]"`` -> ``("kd", {"temperature": "2", ...})``: a method or
    preset with some hyperparameters changed, benchmarked under that full name (values parsed as on the command
    line)."""
    base, sep, rest = method.partition("[")
    if not sep:
        return method, {}
    if not rest.endswith("]"):
        raise ValueError(f"Bad method variant {method!r}: write name[hyperparameter=value,...].")
    pairs = [p.split("=", 1) for p in rest[:-1].split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"Bad method variant {method!r}: write name[hyperparameter=value,...].")
    return base.strip(), {k.strip(): v.strip() for k, v in pairs}


def method_training_args(method: str) -> dict[str, str]:
    """The :data:`METHOD_TRAINING_ARGS` of ``method`` (or of its variant's base); empty for most methods."""
    return METHOD_TRAINING_ARGS.get(split_variant(method)[0], {})


def method_training_flags(method: str) -> list[str]:
    """:func:`method_training_args` as command-line flags."""
    return [x for k, v in method_training_args(method).items() for x in (f"--{k}", v)]


def variant_flags(method: str) -> list[str]:
    """The ``--<method>-<name> value`` flags of a variant; each hyperparameter goes to every method of the preset
    that has it.

    Raises:
        ValueError: a hyperparameter that none of its methods has.
    """
    base, changed = split_variant(method)
    if not changed:
        return []
    names = list(resolve_objective(base).methods)
    flags = []
    for hp, value in changed.items():
        owners = [m for m in names if hp in METHODS[m].hyperparameters()]
        if not owners:
            raise ValueError(f"{method!r}: none of {', '.join(names)} has a hyperparameter {hp!r}.")
        flags += [x for m in owners for x in (f"--{m}-{hp}", value)]
    return flags


def _sha(path: Path, chars: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:chars]


# -- protocols ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cifar10Protocol:
    """The CIFAR-10 CPU protocol (see the module docstring); every field is part of the protocol hash."""

    epochs: float = CIFAR10_EPOCHS
    per_class: int = 500
    student: str = "cifar_resnet20"
    teacher: str = "assets/teachers/cifar10-resnet56-jpeg"
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    epoch_hyperparameters: str = f"scaled by epochs/{PAPER_EPOCHS}"
    name: str = "cifar10-cpu"

    def definition(self) -> dict[str, Any]:
        weights = REPO / self.teacher / "model.safetensors"
        fields = {**dataclasses.asdict(self), "epochs": float(self.epochs)}  # 30 and 30.0: one protocol
        return {**fields, "teacher_weights": _sha(weights) if weights.exists() else None}

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()[:12]

    def method_args(self, method: str) -> dict[str, dict[str, float]]:
        """The epoch-valued hyperparameters of ``method`` scaled to this budget (the rest stay at default)."""
        out: dict[str, dict[str, float]] = {}
        base = split_variant(method)[0]
        for name in resolve_objective(base).methods if base != BASELINE else []:
            for hp, default in METHODS[name].hyperparameters().items():
                if hp in EPOCH_HYPERPARAMETERS and isinstance(default, (int, float)) and default > 0:
                    out.setdefault(name, {})[hp] = round(float(default) * self.epochs / PAPER_EPOCHS, 4)
        return out

    def argv(self, method: str, seed: int, data_dir: str, output_dir: str) -> list[str]:
        args = {
            "dataset": data_dir,
            "student": self.student,
            "teacher": str(REPO / self.teacher),
            "method": split_variant(method)[0],
            "num_train_epochs": self.epochs,
            "per_device_train_batch_size": self.batch_size,
            "per_device_eval_batch_size": 256,
            "learning_rate": self.learning_rate,
            "optim": "sgd",
            "optim_args": f"momentum={self.momentum}",
            "weight_decay": self.weight_decay,
            "lr_scheduler_type": self.schedule,
            "seed": seed,
            "output_dir": output_dir,
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": torch.cuda.is_available(),
        }
        argv = [x for k, v in args.items() for x in (f"--{k}", str(v))]
        if self.method_args(method):
            argv += ["--method_args", json.dumps(self.method_args(method))]
        return argv + QUIET + method_training_flags(method) + variant_flags(method)


@dataclass(frozen=True)
class Cifar100Protocol:
    """CIFAR-100 with the benchmark configs (``recipes/configs/cifar100/<method>/<pair>.yaml``)."""

    pair: str = "resnet56_resnet20"
    teacher: str | None = None  # default: the kd config's teacher path
    dataset: str | None = None  # default: the configs' (uoft-cs/cifar100)
    name: str = "cifar100-configs"

    def config(self, method: str) -> tuple[Path, list[str]]:
        """The config path (a file there if the user wrote one, else built in memory by ``--config``) and the
        flags that adapt the ``none`` config to a method that has none of its own."""
        root = REPO / "recipes" / "configs" / BENCHMARK
        names = benchmark_names()
        if f"{method}/{self.pair}" in names:
            return root / method / f"{self.pair}.yaml", []
        if f"{BASELINE}/{self.pair}" not in names:
            raise ValueError(
                f"No CIFAR-100 config for the pair {self.pair!r}: see hf_distill.run.benchmark_configs.PAIRS."
            )
        teacher = benchmark_config("kd", self.pair)[1]["teacher"]
        return root / BASELINE / f"{self.pair}.yaml", ["--method", method, "--teacher", teacher]

    def definition(self) -> dict[str, Any]:
        cfg = self.config(BASELINE)[0]
        text = cfg.read_bytes() if cfg.is_file() else render(*benchmark_config(BASELINE, self.pair)).encode()
        return {**dataclasses.asdict(self), "config_sha": hashlib.sha256(text).hexdigest()[:16]}

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()[:12]

    def argv(self, method: str, seed: int, data_dir: str | None, output_dir: str) -> list[str]:
        base = split_variant(method)[0]
        cfg, extra = self.config(base)
        if (
            self.teacher and base != BASELINE
        ):  # it replaces the configs' teacher (a repeated --teacher: ensemble)
            extra = [*extra[:2], "--teacher", self.teacher]  # extra: [] or [--method, m, --teacher, t]
        argv = ["--config", str(cfg), *extra, "--seed", str(seed), "--output_dir", output_dir]
        if data_dir:
            argv += ["--dataset", data_dir]
        return argv + QUIET + method_training_flags(method) + variant_flags(method)


#: no checkpoints, no per-epoch evaluation, the loss logged once an epoch (progress): one evaluation after training
QUIET = [
    "--eval_strategy", "no", "--save_strategy", "no", "--logging_strategy", "epoch", "--report_to", "none",
    "--disable_tqdm", "true",
]  # fmt: skip


# -- data ----------------------------------------------------------------------------------------------------------
def class_balanced_subset(source: Path, target: Path, per_class: int) -> Path:
    """Write ``target/train.parquet`` = the first ``per_class`` rows of each class of ``source/train.parquet`` (in
    file order) and link ``target/test.parquet`` to the full test split; reused when already there."""
    import pyarrow.parquet as pq

    train = target / "train.parquet"
    if not train.exists():
        table = pq.read_table(source / "train.parquet")
        labels = table.column("label").to_pylist()
        seen: dict[int, int] = {}
        rows = []
        for i, y in enumerate(labels):
            if seen.get(y, 0) < per_class:
                seen[y] = seen.get(y, 0) + 1
                rows.append(i)
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / "train.parquet.tmp"
        pq.write_table(table.take(rows), tmp)
        os.replace(tmp, train)
    test = target / "test.parquet"
    if not test.exists():
        test.symlink_to((source / "test.parquet").resolve())
    return target


def data_fingerprint(data_dir: str) -> str:
    """Row counts and a hash of the labels of both splits: two copies of a dataset agree on it."""
    import pyarrow.parquet as pq

    parts = []
    for split in ("train", "test"):
        path = Path(data_dir) / f"{split}.parquet"
        if not path.exists():
            return "unknown"
        labels = pq.read_table(path, columns=["label"]).column("label").to_pylist()
        parts.append(f"{split}:{len(labels)}:{hashlib.sha256(str(labels).encode()).hexdigest()[:8]}")
    return ",".join(parts)


# -- results file --------------------------------------------------------------------------------------------------
KEY_FIELDS = ("method", "seed", "protocol_hash", "code_version", "data")


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY_FIELDS)


def read_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The complete rows of a results file and the number of unreadable (partial or foreign) lines."""
    rows, bad = [], 0
    if not path.exists():
        return rows, bad
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(row, dict) or any(k not in row for k in (*KEY_FIELDS, "top1")):
            bad += 1
            continue
        rows.append(row)
    return rows, bad


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one complete JSON line in a single write (a crash never leaves half a row behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _hardware() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    return name


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# -- runs ----------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """Where a job reads and writes, and how it runs."""

    protocol: Cifar10Protocol | Cifar100Protocol
    data_dir: str | None
    results: Path
    threads: int = 2
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "hf_distill_bench")
    #: the teacher-output cache the runs share (None: every run computes the teacher's outputs)
    teacher_cache: str | None = None

    def base_row(self, method: str, seed: int) -> dict[str, Any]:
        return {
            "method": method,
            "seed": seed,
            "protocol": self.protocol.name,
            "protocol_hash": self.protocol.hash(),
            "code_version": code_version(),
            "data": data_fingerprint(self.data_dir)
            if self.data_dir and os.path.isdir(self.data_dir)
            else None,
            "definition": self.protocol.definition(),
        }


def _parse(job: Job, method: str, seed: int, output_dir: str):
    return parse_args(job.protocol.argv(method, seed, job.data_dir, output_dir), {})


def attach_teacher_cache(job: Job, run) -> None:
    """Give the run the job's teacher-output cache when the teacher's outputs are small (logits, embedding).

    The cache is exact (a run that reads it trains the same student), so it is not part of the protocol: it only
    makes the seeds and the methods that ask the teacher the same thing share one teacher pass. Methods that take
    intermediate maps are not cached here: resnet56's maps are ~110 KB an image, ~20 GB over a 40-epoch run.
    """
    trainer = run.trainer
    if job.teacher_cache and trainer.teacher is not None and not trainer.teacher_request.maps:
        trainer.teacher_cache = TeacherCache.for_trainer(job.teacher_cache, trainer)


def run_one(job: Job, method: str, seed: int) -> dict[str, Any]:
    """Train ``method`` (``none``: the baseline, which never loads the teacher) with ``seed``; its results row."""
    out = str(job.work_dir / f"{method}-s{seed}")
    model_args, data_args, distill_args, training_args, kwargs = _parse(job, method, seed, out)
    if split_variant(method)[0] == BASELINE:
        run = build_baseline(model_args, data_args, distill_args, training_args, output_dir=out)
    else:
        run = build_run(model_args, data_args, distill_args, training_args, kwargs)
        run.trainer.report_teacher_accuracy = False  # measured once, in the teacher's own row
        attach_teacher_cache(job, run)
    load = os.getloadavg()[0]
    t0 = time.time()
    done = train_and_evaluate(run)
    cache = getattr(run.trainer, "teacher_cache", None)
    return {
        **job.base_row(method, seed),
        "top1": done.metrics.get("eval_accuracy"),
        "top5": done.metrics.get("eval_top5_accuracy"),
        "train_seconds": round(done.train_seconds, 1),
        "init_stage_seconds": round(done.init_stage_seconds, 1),
        "epochs": float(training_args.num_train_epochs),
        "num_train_samples": len(run.train.dataset),
        "num_eval_samples": len(run.eval.dataset) if run.eval is not None else None,
        "objective": run.trainer.model.objective.describe(),
        "training_args": method_training_args(method),
        "hardware": _hardware(),
        "threads": torch.get_num_threads(),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        # the training time depends on whether the teacher's outputs were read from the cache: say which
        "teacher_cache_read_rows": cache.read_rows if cache is not None else None,
        "teacher_cache_computed_rows": cache.computed_rows if cache is not None else None,
    }


def run_teacher(job: Job) -> dict[str, Any]:
    """The teacher's own top-1/top-5 on the test split (the row ``method=teacher``)."""
    model_args, data_args, distill_args, training_args, kwargs = _parse(
        job, "kd", 0, str(job.work_dir / "teacher")
    )
    run = build_run(model_args, data_args, distill_args, training_args, kwargs)
    t0 = time.perf_counter()
    metrics = run.trainer.evaluate_teacher()
    return {
        **job.base_row(TEACHER, 0),
        "top1": metrics.get("accuracy"),
        "top5": metrics.get("top5_accuracy"),
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "num_eval_samples": len(run.eval.dataset) if run.eval is not None else None,
        "hardware": _hardware(),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }


def plan(methods: list[str], seeds: list[int], first_seeds: list[int]) -> list[tuple[str, int]]:
    """Run order: every seed of :data:`FIRST_METHODS` (baseline and KD first, then the teacher's own evaluation),
    then the other methods with ``first_seeds``, then their remaining seeds."""
    first = [m for m in FIRST_METHODS if m in methods]
    rest = [m for m in methods if m not in FIRST_METHODS]
    order = [(m, s) for m in first for s in seeds]
    at = max((i + 1 for i, (m, _) in enumerate(order) if m in (BASELINE, "kd")), default=0)
    order.insert(at, (TEACHER, 0))
    order += [(m, s) for s in first_seeds for m in rest]
    order += [(m, s) for s in seeds if s not in first_seeds for m in rest]
    return order


def run_job(job: Job, order: list[tuple[str, int]]) -> None:
    """Run every (method, seed) of ``order`` (``teacher``: the teacher's evaluation) whose row is not in the results
    file yet, appending each row when its run completes."""
    torch.set_num_threads(job.threads)
    log = logging.getLogger("benchmark")
    rows, _ = read_rows(job.results)
    done = {row_key(r) for r in rows}
    for method, seed in order:
        if row_key(job.base_row(method, seed)) in done:
            continue
        log.info("run %s seed %d", method, seed)
        try:
            row = run_teacher(job) if method == TEACHER else run_one(job, method, seed)
        except Exception:  # one broken method must not stop the job; its key stays open for a rerun
            log.exception("run %s seed %d failed", method, seed)
            continue
        append_row(job.results, row)
        done.add(row_key(row))
        log.info(
            "%s seed %d: top-1 %s, %s",
            method,
            seed,
            row["top1"],
            {k: v for k, v in row.items() if "seconds" in k},
        )


# -- command line --------------------------------------------------------------------------------------------------
def _split(text: str | None) -> list[str]:
    """A comma list; commas inside a variant's brackets (``kd[a=1,b=2]``) do not split."""
    return [t.strip() for t in re.split(r",(?![^\[]*\])", text or "") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("cifar10", "cifar100"), default="cifar10")
    p.add_argument("--dataset", default=None, help="CIFAR-10: folder with train/test.parquet "
                   "(default ../shared/data/cifar10 beside the repository); CIFAR-100: dataset path or Hub id.")  # fmt: skip
    p.add_argument("--results", default=None, help="Results file (default benchmarks/results/<mode>.jsonl).")
    p.add_argument("--methods", default=None, help="Comma list (default: every method and preset); a variant "
                   "with changed hyperparameters as name[hp=value,...], e.g. 'kd[temperature=2]'.")  # fmt: skip
    p.add_argument("--seeds", default="0,1,2", help="Seeds of the baseline and the main methods.")
    p.add_argument("--other_seeds", default="0", help="Seeds of the other methods, run after the main ones.")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the README's figures: 2).")
    p.add_argument("--epochs", type=float, default=None, help="Override the budget (another protocol hash).")
    p.add_argument("--per_class", type=int, default=None, help="Training images per class (default 500; "
                   "another protocol hash), e.g. to find a short configuration where distillation pays.")  # fmt: skip
    p.add_argument("--epoch_curve", default=None, help="Comma list of budgets: run the baseline (and "
                   "--curve_methods) at each, to choose the protocol's budget.")  # fmt: skip
    p.add_argument("--curve_methods", default="none", help="Methods of --epoch_curve.")
    p.add_argument("--pair", default="resnet56_resnet20", help="CIFAR-100 teacher_student pair.")
    p.add_argument("--student", default=None, help="CIFAR-10: the student (default cifar_resnet20; another "
                   "protocol hash): a CIFAR-zoo name (cifar_mobilenetv2), a timm name or a model folder.")  # fmt: skip
    p.add_argument("--teacher", default=None, help="The trained teacher's folder (CIFAR-10 default "
                   "assets/teachers/cifar10-resnet56-jpeg; another protocol hash).")  # fmt: skip
    p.add_argument("--cache_dir", default=str(Path.home() / ".cache" / "hf_distill" / "benchmarks"))
    p.add_argument("--work_dir", default=None, help="Where runs write their (unused) output folders.")
    p.add_argument("--teacher_cache", default=None, help="Teacher-output cache shared by the runs (default "
                   "<cache_dir>/teacher-outputs; 'none' to run the teacher in every run). Exact: not part of the "
                   "protocol.")  # fmt: skip
    p.add_argument(
        "--report",
        action="store_true",
        help="Write the table of docs/results.md and the chart; train nothing.",
    )
    p.add_argument(
        "--doc", default=str(REPO / "docs" / "results.md"), help="Where --report writes the table."
    )
    p.add_argument("--chart", default=str(REPO / "benchmarks" / "results" / "cifar10.png"))
    return p


def checked_student(name: str) -> str:
    """``name`` if it builds a student here without the network: a CIFAR-zoo name, a timm architecture, a folder.

    Raises:
        ValueError: anything else (a Hub id would only fail inside every run, one traceback each).
    """
    import timm

    from hf_distill.models.loading import zoo_architecture

    if zoo_architecture(name) or os.path.isdir(name) or timm.is_model(name):
        return name
    raise ValueError(
        f"--student {name!r} is neither a CIFAR-zoo name (cifar_resnet20, cifar_mobilenetv2, ...: "
        "`timm.list_models('cifar_*')`), a timm architecture nor a model folder: pass one of those."
    )


def checked_teacher(path: str) -> str:
    """The teacher folder as the protocol records it: relative to the repository when inside it (so that the hash
    does not depend on where the checkout lies), else absolute.

    Raises:
        ValueError: not a model folder.
    """
    folder = Path(path).resolve()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"--teacher {path} is not a model folder (no config.json): pass a trained teacher's folder."
        )
    return str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder)


def make_job(a: argparse.Namespace) -> Job:
    """The job of the parsed arguments (data subset prepared for CIFAR-10)."""
    work = Path(a.work_dir) if a.work_dir else Path(tempfile.gettempdir()) / "hf_distill_bench"
    results = Path(a.results) if a.results else RESULTS / f"{a.mode}.jsonl"
    cache = (
        None if a.teacher_cache == "none" else a.teacher_cache or str(Path(a.cache_dir) / "teacher-outputs")
    )
    if a.mode == "cifar100":
        if a.student is not None:
            raise ValueError("--student is for --mode cifar10: in CIFAR-100 mode --pair names the student.")
        return Job(Cifar100Protocol(a.pair, a.teacher, a.dataset), a.dataset, results, a.threads, work, cache)
    source = Path(a.dataset) if a.dataset else REPO.parent / "shared" / "data" / "cifar10"
    protocol = Cifar10Protocol(
        epochs=CIFAR10_EPOCHS if a.epochs is None else a.epochs,
        per_class=500 if a.per_class is None else a.per_class,
        student=Cifar10Protocol.student if a.student is None else checked_student(a.student),
        teacher=Cifar10Protocol.teacher if a.teacher is None else checked_teacher(a.teacher),
    )
    if not (source / "train.parquet").exists() or not (source / "test.parquet").exists():
        raise ValueError(
            f"{source} has no train.parquet/test.parquet: pass --dataset, a folder with the full CIFAR-10 splits "
            "(columns img, label)."
        )
    data = class_balanced_subset(
        source, Path(a.cache_dir) / f"cifar10-{protocol.per_class}pc", protocol.per_class
    )
    return Job(protocol, str(data), results, a.threads, work, cache)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO)
    a = build_parser().parse_args(argv)
    with exit_on_bad_input(ValueError):
        if a.report:
            from benchmarks.accuracy_report import write_report

            results = Path(a.results) if a.results else RESULTS / f"{a.mode}.jsonl"
            print(write_report(results, Path(a.doc), Path(a.chart), Cifar10Protocol()))
            return
        methods = _split(a.methods) or all_methods()
        for m in methods:
            if split_variant(m)[0] != BASELINE:
                variant_flags(m)  # an unknown name or hyperparameter fails here, before any training
                resolve_objective(split_variant(m)[0])
        job = make_job(a)
        seeds = [int(s) for s in _split(a.seeds)]
    logging.getLogger("transformers").setLevel(logging.WARNING)
    if a.epoch_curve:
        for epochs in [float(e) for e in _split(a.epoch_curve)]:
            curve = dataclasses.replace(job, protocol=dataclasses.replace(job.protocol, epochs=epochs))
            run_job(curve, [(m, s) for m in _split(a.curve_methods) for s in seeds])
        return
    run_job(job, plan(methods, seeds, [int(s) for s in _split(a.other_seeds)]))


if __name__ == "__main__":
    main()
