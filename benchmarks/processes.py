#!/usr/bin/env python
"""Throughput of 1 process vs N processes (accelerate launch, gloo on CPU or NCCL on GPUs), measured side by side.

    python benchmarks/processes.py                  # KD, resnet56 -> resnet20, 2 processes, 40 steps
    python benchmarks/processes.py --method crd --nproc 2 --steps 40

Same global batch in both runs (per-process batch halved), so the numbers say how much multi-process training
speeds up one optimizer step. On a 2-core CPU machine expect little: both processes share the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "ddp_run.py"


def run(nproc: int, batch: int, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench_{nproc}p_"))
    common = [
        "--dataset", str(REPO / "assets" / "cifar10-subset"), "--teacher", str(REPO / "assets" / "teachers" / "cifar10-resnet56-jpeg"),
        "--student", args.student, "--method", args.method, "--per_device_train_batch_size", str(batch),
        "--max_steps", str(args.steps), "--max_eval_samples", "64", "--output_dir", str(out / "run"),
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--use_cpu", "true",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc)),
    }
    if nproc == 1:
        cmd = [sys.executable, str(SCRIPT), str(out)] + common
    else:
        cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(out)] + common  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=str(REPO))
    return json.loads((out / "rank0.json").read_text())["train_metrics"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="kd")
    ap.add_argument("--student", default="cifar_resnet20")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    one = run(1, args.batch, args)
    many = run(args.nproc, args.batch // args.nproc, args)
    s1, sn = one["train_samples_per_second"], many["train_samples_per_second"]
    print(
        f"{args.method}, {args.student}, global batch {args.batch}, {args.steps} steps, {os.cpu_count()} CPUs"
    )
    print("| processes | samples/s (all) | samples/s per process | speed-up |")
    print("|---|---|---|---|")
    print(f"| 1 | {s1:.1f} | {s1:.1f} | 1.00x |")
    print(f"| {args.nproc} | {sn:.1f} | {sn / args.nproc:.1f} | {sn / s1:.2f}x |")


if __name__ == "__main__":
    main()
