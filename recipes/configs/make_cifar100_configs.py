#!/usr/bin/env python
"""Write the CIFAR-100 benchmark configs as YAML files: one per (method, teacher->student pair) of the benchmarks of
CRD (RepDistiller) and DKD (mdistiller), plus one per teacher to train it first.

    python recipes/configs/make_cifar100_configs.py               # write recipes/configs/cifar100/ (not committed)
    python recipes/configs/make_cifar100_configs.py --out DIR     # write them under DIR instead
    python recipes/configs/make_cifar100_configs.py --check       # exit 1 if the files there differ

The files are not needed to run one: ``recipes/distill.py --config recipes/configs/cifar100/<method>/<pair>.yaml``
builds a missing one in memory. What they hold (pairs, schedule, published numbers, per-pair hyperparameters) lives
in the package, ``hf_distill.run.benchmark_configs``; write the files to read or edit them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from hf_distill.run.benchmark_configs import BENCHMARK, benchmark_files  # noqa: E402

OUT = Path(__file__).resolve().parent / BENCHMARK


def write_or_check(files: dict[str, str], out: Path, description: str, argv: list[str] | None = None) -> int:
    """The generators' command line: write ``files`` (relative path -> text) under ``out`` (or ``--out``), or with
    ``--check`` only compare them with the files there (exit status 1 listing what is out of date or left over).

    Returns:
        The exit status.
    """
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=out, help=f"the folder to write (default: {out})")
    ap.add_argument("--check", action="store_true", help="only compare with the files in the folder")
    args = ap.parse_args(argv)
    wanted = {args.out / rel: text for rel, text in files.items()}
    if args.check:
        stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
        extra = sorted(set(args.out.rglob("*.yaml")) - set(wanted))
        for p in stale + extra:
            print(f"out of date: {p.relative_to(args.out)}")
        return 1 if stale or extra else 0
    for path, text in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(wanted)} configs under {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return write_or_check(benchmark_files(), OUT, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
