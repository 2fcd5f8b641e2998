#!/usr/bin/env python
"""Step time beside busy processes: torch's default thread count against the thread policy, in one run.

    python benchmarks/threads.py                                   # 0, 1 and 2 busy processes -> results/threads.json
    python benchmarks/threads.py --busy 1 --wait_policies default --steps 10 --out /tmp/threads.json
    python benchmarks/threads.py --render benchmarks/results/threads.json   # the table of docs/speed_threads.md

The step is the default run's configuration (resnet56 teacher -> resnet20 student, batch 64) as
``benchmarks/throughput.py`` times its limit: teacher forward without grad, student forward and backward with
cross-entropy, SGD step (KD's step costs 1.02x it there). For each number of busy processes (single-threaded Python
loops that this benchmark starts and stops) and each ``OMP_WAIT_POLICY`` (OpenMP reads it when torch is imported, so
each gets a fresh worker process): the worker decides the policy's thread count
(:func:`hf_distill.run.threads.choose_thread_policy`, with the busy processes running), then times steps with 1 thread,
torch's default count and the policy's count in turn (ABAB: the machine's other load hits them alike). Reported: the
median step time of each count after the warm-up, the interquartile spread, the load average around the worker, and
before (torch's default) / after (the policy) with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

#: a single-threaded busy process: what "one other busy process" means here
SPINNER = "while True: pass"
WAIT_POLICIES = ("default", "PASSIVE")
OUT = REPO / "benchmarks" / "results" / "threads.json"


def worker(args: argparse.Namespace) -> dict:
    """Time the step with each thread count in turn in this process; the policy decided first. Returns a row."""
    import torch

    from benchmarks.throughput import Limit, Options, SyntheticRows, load_pair, summarize
    from hf_distill.data.datasets import collate
    from hf_distill.run.threads import choose_thread_policy

    default = torch.get_num_threads()
    policy = choose_thread_policy(device="cpu")
    counts = sorted({1, default, policy.threads})
    device = torch.device("cpu")
    teacher, student = load_pair(args.pair, Options())
    limit = Limit(teacher, student, Options(), device)
    rows = SyntheticRows(rows=args.batch_size)
    batch = collate([rows[i] for i in range(args.batch_size)])
    times: dict[int, list[float]] = {n: [] for n in counts}
    load_before = os.getloadavg()[0]
    for _ in range(args.warmup + args.steps):
        for n in counts:
            torch.set_num_threads(n)
            t = time.perf_counter()
            limit.step(batch)
            times[n].append(time.perf_counter() - t)
    medians = {n: summarize(ts[args.warmup :]) for n, ts in times.items()}
    before, after = medians[default]["median_s"], medians[policy.threads]["median_s"]
    return {
        "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "policy": {**policy.__dict__, "line": policy.describe()},
        "step_s": {str(n): round(m["median_s"], 4) for n, m in medians.items()},
        "iqr_rel": {str(n): round(m["iqr_rel"], 3) for n, m in medians.items()},
        "before_threads": default,
        "after_threads": policy.threads,
        "before_s": round(before, 4),
        "after_s": round(after, 4),
        "before_over_after": round(before / after, 3),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def run_worker(args: argparse.Namespace, wait_policy: str) -> dict:
    """One fresh worker process with ``wait_policy`` in its environment (``default``: unset)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *worker_flags(args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_flags(args: argparse.Namespace) -> list[str]:
    flags = [
        "--pair",
        args.pair,
        "--batch_size",
        args.batch_size,
        "--steps",
        args.steps,
        "--warmup",
        args.warmup,
    ]
    return [str(f) for f in flags]


def with_busy_processes(n: int, run):
    """``run()`` while ``n`` busy processes spin (started here, stopped here, by their handles)."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(n)]
    try:
        time.sleep(1.0 if n else 0.0)  # running, not starting, when the worker probes the cores
        return run()
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        row = worker(args)
        print(json.dumps(row))
        return row
    if args.render:
        result = json.loads(Path(args.render).read_text())
        print(markdown(result), end="")
        return result
    import torch

    result = {
        "pair": args.pair,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "environment": {
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_default_threads": torch.get_num_threads(),
            "load_before": round(os.getloadavg()[0], 2),
        },
        "rows": [],
    }
    for busy in args.busy:
        for wait_policy in args.wait_policies:
            row = with_busy_processes(busy, lambda w=wait_policy: run_worker(args, w))
            result["rows"].append({"busy_processes": busy, **row})
            result["environment"]["load_after"] = round(os.getloadavg()[0], 2)
            save(result, args.out)
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    """One table: per load and wait policy, the step time of each thread count, before / after and their ratio."""
    env = result["environment"]
    lines = [
        f"{result['pair']}, batch {result['batch_size']}, {result['steps']} timed steps after {result['warmup']} "
        f"warm-up; {env['cpus']} cores ({env['machine']}), torch {env['torch']} (default {env['torch_default_threads']}"
        f" threads); load average {env['load_before']} before / {env.get('load_after')} after.",
        "",
        "| busy processes | OMP_WAIT_POLICY | load (before / after) | probed busy cores | s/step by threads (spread) | "
        "before: torch's default (threads) | after: the policy (threads) | before / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        by_threads = ", ".join(
            f"{n}: {s:.3f} ({100 * r['iqr_rel'][n]:.0f}%)"
            for n, s in sorted(r["step_s"].items(), key=lambda kv: int(kv[0]))
        )
        busy = r["policy"]["busy"]
        lines.append(
            f"| {r['busy_processes']} | {r['wait_policy']} | {r['load_before']} / {r['load_after']} "
            f"| {'-' if busy is None else f'{busy:.1f}'} | {by_threads} | {r['before_s']:.3f} s ({r['before_threads']}) "
            f"| {r['after_s']:.3f} s ({r['after_threads']}) | {r['before_over_after']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def save(result: dict, out: str | None) -> None:
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pair", default="resnet56-resnet20", help="a pair of benchmarks/throughput.py or teacher:student"
    )
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per thread count")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--busy", default="0,1,2", help="comma list of busy-process counts")
    ap.add_argument(
        "--wait_policies", default=",".join(WAIT_POLICIES), help="comma list: default, PASSIVE, ACTIVE"
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    ap.add_argument("--out", default=str(OUT), help="the JSON (empty: none)")
    ap.add_argument("--render", default=None, help="print the table of a saved JSON result and exit")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.busy = [int(b) for b in str(args.busy).split(",")]
    args.wait_policies = args.wait_policies.split(",")
    bad = [w for w in args.wait_policies if w not in (*WAIT_POLICIES, "ACTIVE")]
    if bad or min(args.busy) < 0 or args.steps < 1 or args.warmup < 0:
        ap.error(
            "--busy counts >= 0, --steps >= 1, --warmup >= 0, --wait_policies of default, PASSIVE, ACTIVE"
        )
    return args


if __name__ == "__main__":
    main()
