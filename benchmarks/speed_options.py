#!/usr/bin/env python
"""Does a speed option help? The bare distillation step with and without it, interleaved in one process.

    python benchmarks/speed_options.py                                  # resnet56 -> resnet20, every option
    python benchmarks/speed_options.py --pairs resnet32x4-resnet8x4 --options channels_last,teacher_bf16
    python benchmarks/speed_options.py --out benchmarks/results/speed_options.json
    python benchmarks/speed_options.py --render benchmarks/results/speed_options.json   # docs/speed.md's table

For each pair and option: two copies of the same randomly initialized teacher and student, one run plainly and one
with the option, each doing the limit step of ``benchmarks/throughput.py`` (teacher forward without grad + student
forward/backward with cross-entropy + SGD step) on the same batches, alternating (ABAB) so that the load of a shared
machine hits both alike. Reported: the median step time of each after the warm-up (``torch.compile`` compiles in
it), the speedup (plain / with the option; above 1 the option helps) and the interquartile spreads. The options:

* ``channels_last``: networks and batches in channels-last memory format (``--channels_last`` of the recipe);
* ``teacher_bf16``: the teacher's forward under bfloat16 autocast (not exact: its outputs change);
* ``compile``: ``torch.compile`` of the teacher and the student (``--torch_compile`` of TrainingArguments).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

from benchmarks.throughput import (  # noqa: E402
    PAIRS,
    Limit,
    Options,
    SyntheticRows,
    _sync,
    environment,
    load_pair,
    summarize,
)
from hf_distill.data.datasets import collate  # noqa: E402

OPTIONS = [f.name for f in fields(Options)]


def compare(pair: str, option: str, steps: int, warmup: int, batch_size: int, device: torch.device) -> dict:
    """Plain limit steps and limit steps with ``option``, interleaved on the same batches."""
    load_before = round(os.getloadavg()[0], 1)
    loops = {}
    for name, options in (("plain", Options()), (option, Options(**{option: True}))):
        teacher, student = load_pair(pair, options)
        loops[name] = Limit(teacher.to(device), student, options, device)
    data = SyntheticRows(rows=batch_size * (steps + warmup))
    times: dict[str, list[float]] = {name: [] for name in loops}
    for i in range(steps + warmup):
        rows = [data[j] for j in range(i * batch_size, (i + 1) * batch_size)]
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        for name, loop in loops.items():
            _sync(device)
            t = time.perf_counter()
            loop.step(batch)
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    plain, with_option = summarize(times["plain"]), summarize(times[option])
    return {
        "pair": pair,
        "option": option,
        "plain_s": plain["median_s"],
        "option_s": with_option["median_s"],
        "speedup": plain["median_s"] / with_option["median_s"],
        "plain_iqr": plain["iqr_rel"],
        "option_iqr": with_option["iqr_rel"],
        "steps": steps,
        "load": [load_before, round(os.getloadavg()[0], 1)],
    }


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"Batch {result['batch_size']}, {result['steps']} timed steps after {result['warmup']} warm-up, "
        f"{env['device']}, torch {env['torch']}.",
        "",
        "| pair | option | plain step (s) | with the option (s) | speedup | spread (plain / option) | load average "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        # a speedup inside the larger spread is no evidence either way
        noise = max(r["plain_iqr"], r["option_iqr"])
        verdict = (
            "helps"
            if r["speedup"] > 1 + noise
            else "slower"
            if r["speedup"] < 1 - noise
            else "no clear change"
        )
        lines.append(
            f"| {r['pair']} | {r['option']} | {r['plain_s']:.3f} | {r['option_s']:.3f} | {r['speedup']:.2f}x "
            f"| {r['plain_iqr']:.0%} / {r['option_iqr']:.0%} | {r['load'][0]} -> {r['load'][1]} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pairs", default="resnet56-resnet20", help=f"comma list of {', '.join(PAIRS)} or t:s names"
    )
    ap.add_argument("--options", default=",".join(OPTIONS), help=f"comma list of {', '.join(OPTIONS)}")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--out", default=None, help="write the JSON here (and the markdown next to it, .md)")
    ap.add_argument("--render", default=None, help="print the markdown of a saved JSON result and exit")
    args = ap.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        print(markdown(result), end="")
        return result
    unknown = [o for o in args.options.split(",") if o not in OPTIONS]
    if unknown:
        ap.error(f"unknown option(s) {', '.join(unknown)}: choose from {', '.join(OPTIONS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "environment": environment(device),
        "rows": [],
    }
    for pair in args.pairs.split(","):
        for option in args.options.split(","):
            result["rows"].append(compare(pair, option, args.steps, args.warmup, args.batch_size, device))
            result["environment"]["load_after"] = round(os.getloadavg()[0], 1)
            if args.out:
                Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
                Path(args.out).with_suffix(".md").write_text(markdown(result))
    print(markdown(result), end="")
    return result


if __name__ == "__main__":
    main()
