#!/usr/bin/env python
"""The teacher cache's top-k mode (``--teacher_cache_topk K``) against the exact cache: disk per row, how much of the
teacher's distribution the reconstruction keeps, and the accuracy of KD trained on it.

    python benchmarks/teacher_cache_topk.py --disk                 # bytes per row, exact vs k = 1, 3, 5 (seconds)
    python benchmarks/teacher_cache_topk.py --fidelity             # the real CIFAR-10 teacher's logits, kept vs lost
    python benchmarks/teacher_cache_topk.py --accuracy --threads 1 # KD, exact vs k = 1, 3, 5 (one run each, hours)

``--disk`` writes real shards through :class:`~hf_distill.training.teacher_cache.TeacherCache` (``--rows`` rows of
random logits over 10, 100 and 1000 classes) and reports the bytes on disk per row of each mode, and what one
ImageNet epoch (1,281,167 rows) would take. ``--fidelity`` runs the accuracy benchmark's CIFAR-10 teacher on the
first ``--fidelity_rows`` test images and reports, per k, the teacher probability the top k hold and the KL divergence
from the teacher's softmax to the reconstructed one at T = 1 and at KD's T = 4. ``--accuracy`` trains KD (seed
``--seed``) on the CIFAR-10 CPU protocol of ``benchmarks/accuracy.py`` (``--per_class`` and ``--epochs`` as there;
the defaults are the short variant of ``benchmarks/results/cifar10-short.jsonl``: 100 images per class, 30 epochs) once
per cache mode; a run that finished is kept and skipped on a rerun, so an interrupted job resumes where it stopped.

Every part rewrites its own section of ``--json`` (default ``benchmarks/results/teacher_cache_topk.json``) and leaves
the others; accuracy rows are added one by one as runs finish.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks import accuracy  # noqa: E402
from hf_distill.methods import Features  # noqa: E402
from hf_distill.training.teacher_cache import TeacherCache  # noqa: E402
from hf_distill.training.teacher_cache_topk import topk_compress, topk_reconstruct  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "teacher_cache_topk.json"
IMAGENET_TRAIN_ROWS = 1_281_167
#: KD's default temperature (hf_distill.methods.kd): the softening the student actually learns from
KD_TEMPERATURE = 4.0
EXACT = "exact"


def parse_modes(text: str) -> list[int | None]:
    """``"exact,1,3,5"`` -> ``[None, 1, 3, 5]`` (None: the exact cache)."""
    return [None if m.strip() == EXACT else int(m) for m in text.split(",") if m.strip()]


def mode_name(topk: int | None) -> str:
    return EXACT if topk is None else f"top-{topk}"


# -- disk ------------------------------------------------------------------------------------------------------------
class _Rows:
    """The smallest training set a cache accepts: a size and the current epoch."""

    epoch, seed = 0, 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def bytes_per_row(num_classes: int, topk: int | None, rows: int, batch: int = 256) -> float:
    """Bytes on disk per row of one epoch of ``rows`` random logits written through a real cache (one shard)."""
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        cache = TeacherCache(root, {"benchmark": "disk"}, _Rows(rows), flush_rows=rows, topk=topk)
        for start in range(0, rows, batch):
            index = torch.arange(start, min(start + batch, rows))
            logits = torch.randn(len(index), num_classes, generator=g) * 3
            pixels = torch.rand(len(index), 3, 2, 2, generator=g)
            cache.features(pixels, index, lambda logits=logits: Features(logits=logits))
        cache.flush()
        return sum(cache.disk_usage().values()) / rows


def disk_table(rows: int, modes: list[int | None], classes: list[int]) -> list[dict[str, Any]]:
    out = []
    for c in classes:
        exact = None
        for k in modes:
            if k is not None and k >= c:
                continue
            per_row = bytes_per_row(c, k, rows)
            exact = per_row if k is None else exact
            out.append(
                {
                    "classes": c,
                    "mode": mode_name(k),
                    "bytes_per_row": round(per_row, 1),
                    "fraction_of_exact": None if exact is None else round(per_row / exact, 4),
                    "imagenet_epoch_gb": round(per_row * IMAGENET_TRAIN_ROWS / 1e9, 3) if c == 1000 else None,
                }
            )
    return out


# -- fidelity --------------------------------------------------------------------------------------------------------
def kl(p_logits: Tensor, q_logits: Tensor, temperature: float) -> float:
    """Mean KL(softmax(p/T) || softmax(q/T)) over the rows."""
    p = torch.log_softmax(p_logits.double() / temperature, -1)
    q = torch.log_softmax(q_logits.double() / temperature, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def fidelity(logits: Tensor, modes: list[int | None]) -> list[dict[str, Any]]:
    """Per k: the teacher probability its top k hold (mean, min) and the KL from the teacher's softmax to the
    reconstructed one at T = 1 and at KD's temperature."""
    out = []
    probs = logits.double().softmax(-1)
    for k in modes:
        if k is None or k >= logits.shape[-1]:
            continue
        rec = topk_reconstruct(*topk_compress(logits, k).values(), logits.shape[-1])
        kept = probs.topk(k, -1).values.sum(-1)
        out.append(
            {
                "mode": mode_name(k),
                "top_k_mass_mean": round(float(kept.mean()), 5),
                "top_k_mass_min": round(float(kept.min()), 5),
                "kl_t1": float(f"{kl(logits, rec, 1.0):.3g}"),
                f"kl_t{KD_TEMPERATURE:g}": float(f"{kl(logits, rec, KD_TEMPERATURE):.3g}"),
                "reconstruction_error_t1": float(
                    f"{float((rec.softmax(-1) - _expected(probs, k)).abs().max()):.3g}"
                ),
            }
        )
    return out


def _expected(probs: Tensor, k: int) -> Tensor:
    """The distribution a top-k row stands for, computed independently: the top-k probabilities kept, the rest of
    the mass spread uniformly over the other classes."""
    top = probs.topk(k, -1)
    rest = (1 - top.values.sum(-1, keepdim=True)) / (probs.shape[-1] - k)
    return (rest.expand_as(probs).clone().scatter(-1, top.indices, top.values)).float()


def teacher_test_logits(job: accuracy.Job, rows: int) -> Tensor:
    """The protocol's teacher's logits on the first ``rows`` test images (evaluation transform)."""
    model_args, data_args, distill_args, training_args, kwargs = accuracy._parse(
        job, "kd", 0, str(job.work_dir / "topk-fidelity")
    )
    run = accuracy.build_run(model_args, data_args, distill_args, training_args, kwargs)
    trainer, data = run.trainer, run.eval.dataset
    out = []
    for start in range(0, min(rows, len(data)), 250):
        batch = trainer.data_collator([data[i] for i in range(start, min(start + 250, rows, len(data)))])
        out.append(
            trainer.teacher_features(batch["pixel_values"].to(trainer.args.device)).logits.float().cpu()
        )
    return torch.cat(out)


# -- accuracy --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def cache_mode(topk: int | None):
    """Make ``benchmarks/accuracy.py``'s runs attach the cache in this mode (its runner has no top-k option)."""
    attach = accuracy.attach_teacher_cache

    def attach_topk(job: accuracy.Job, run) -> None:
        run.trainer.teacher_cache = TeacherCache.for_trainer(job.teacher_cache, run.trainer, topk=topk)

    accuracy.attach_teacher_cache = attach_topk
    try:
        yield
    finally:
        accuracy.attach_teacher_cache = attach


def run_accuracy(job: accuracy.Job, modes: list[int | None], seed: int, path: Path) -> None:
    torch.set_num_threads(job.threads)
    for k in modes:
        done = read(path).get("accuracy", {}).get("runs", [])
        key = accuracy.row_key(job.base_row("kd", seed))
        if any(accuracy.row_key(r) == key and r["teacher_cache_mode"] == mode_name(k) for r in done):
            print(f"kd seed {seed} {mode_name(k)}: already in {path}, skipped")
            continue
        print(f"kd seed {seed} {mode_name(k)}: training", flush=True)
        with cache_mode(k):
            row = accuracy.run_one(job, "kd", seed)
        row["teacher_cache_mode"] = mode_name(k)
        update(path, lambda r, row=row: r.setdefault("accuracy", {}).setdefault("runs", []).append(row))
        print(f"kd seed {seed} {mode_name(k)}: top-1 {row['top1']}, {row['train_seconds']} s", flush=True)


# -- results file ----------------------------------------------------------------------------------------------------
def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def update(path: Path, change) -> None:
    """Read, change and atomically rewrite the results file (each part keeps the others' sections)."""
    results = read(path)
    change(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--disk", action="store_true", help="Bytes per row on disk, per mode and class count.")
    p.add_argument(
        "--fidelity", action="store_true", help="What the reconstruction keeps of the real teacher."
    )
    p.add_argument("--accuracy", action="store_true", help="KD on the CIFAR-10 protocol, once per mode.")
    p.add_argument("--modes", default="exact,1,3,5", help="Cache modes: 'exact' and values of k.")
    p.add_argument("--rows", type=int, default=4096, help="--disk: rows written per mode.")
    p.add_argument("--classes", default="10,100,1000", help="--disk: class counts.")
    p.add_argument("--fidelity_rows", type=int, default=1000, help="--fidelity: test images.")
    p.add_argument("--seed", type=int, default=0, help="--accuracy: the training seed (one run per mode).")
    p.add_argument("--per_class", type=int, default=100, help="--accuracy: training images per class.")
    p.add_argument("--epochs", type=float, default=30, help="--accuracy: epoch budget.")
    p.add_argument("--threads", type=int, default=1, help="torch threads.")
    p.add_argument("--cache_dir", default=str(Path.home() / ".cache" / "hf_distill" / "benchmarks"))
    p.add_argument("--json", default=str(RESULTS), help="Results file.")
    a = p.parse_args(argv)
    if not (a.disk or a.fidelity or a.accuracy):
        p.error("choose at least one of --disk, --fidelity, --accuracy")
    torch.set_num_threads(a.threads)
    modes, path = parse_modes(a.modes), Path(a.json)
    load = [round(x, 2) for x in os.getloadavg()]
    if a.disk:
        table = disk_table(a.rows, modes, [int(c) for c in a.classes.split(",")])
        update(path, lambda r: r.update(disk={"rows_written": a.rows, "load_average": load, "table": table}))
        print(json.dumps(table, indent=1))
    if a.fidelity or a.accuracy:
        bench_args = ["--per_class", str(a.per_class), "--epochs", str(a.epochs), "--threads", str(a.threads)]
        job = accuracy.make_job(accuracy.build_parser().parse_args(bench_args + ["--cache_dir", a.cache_dir]))
    if a.fidelity:
        logits = teacher_test_logits(job, a.fidelity_rows)
        table = fidelity(logits, modes)
        section = {"teacher": job.protocol.teacher, "test_rows": len(logits), "table": table}
        update(path, lambda r: r.update(fidelity=section))
        print(json.dumps(table, indent=1))
    if a.accuracy:
        protocol = {
            **job.protocol.definition(),
            "protocol_hash": job.protocol.hash(),
            "method": "kd",
            "seeds": [a.seed],
            "note": "one seed per mode: differences below the seed-to-seed spread of kd on this protocol "
            "(benchmarks/results/cifar10-short.jsonl) are noise",
        }
        update(path, lambda r: r.setdefault("accuracy", {}).update(protocol=protocol))
        t0 = time.time()
        run_accuracy(job, modes, a.seed, path)
        print(f"accuracy runs done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
