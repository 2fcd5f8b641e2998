#!/usr/bin/env python
"""Regenerate every generated part of README.md and docs/*.md, or check that they are current.

    python scripts/make_docs.py          # rewrite every generated block (and the accuracy chart)
    python scripts/make_docs.py --check  # write nothing; exit 1 naming each stale block

A generated part is the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in a markdown file; the
text around the markers is hand-written and never touched. :data:`BLOCKS` lists them all with what renders each:
the methods table from the method registry, the other tables from the committed results under
``benchmarks/results/``. ``tests/docs/test_docs.py`` runs ``--check``. The bar chart
(``benchmarks/results/cifar10.png``) is redrawn by a write but not compared by ``--check``: its bytes depend on the
installed matplotlib and fonts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmarks/ is imported as a package, as the tests do


def methods_table() -> str:
    from hf_distill.methods.table import markdown

    return markdown()


def results_table() -> str:
    from benchmarks.accuracy import Cifar10Protocol
    from benchmarks.accuracy_report import results_block

    return results_block(RESULTS / "cifar10.jsonl", Cifar10Protocol())


def default_run_table() -> str:
    from benchmarks.accuracy_report import default_run_table

    return default_run_table(RESULTS / "cifar10-short.jsonl")


#: the heterogeneous pair of docs/results.md: the short protocol (1,000 images, 30 epochs) with another student family
HETERO_STUDENT = "cifar_mobilenetv2"


def hetero_table() -> str:
    from benchmarks.accuracy import Cifar10Protocol
    from benchmarks.accuracy_report import hetero_block

    protocol = Cifar10Protocol(epochs=30, per_class=100, student=HETERO_STUDENT)
    return hetero_block(RESULTS / "cifar10-hetero.jsonl", protocol, RESULTS / "cifar10-short.jsonl")


def throughput_table() -> str:
    from benchmarks.throughput import markdown

    return markdown(json.loads((RESULTS / "throughput.json").read_text()))


def reference_table() -> str:
    from benchmarks.throughput import reference_markdown

    return reference_markdown(json.loads((RESULTS / "reference_steps.json").read_text()))


def mdistiller_reviewkd_table() -> str:
    from benchmarks.mdistiller_reviewkd import markdown

    return markdown(json.loads((RESULTS / "reviewkd_mdistiller.json").read_text()))


def speed_options_table() -> str:
    from benchmarks.speed_options import markdown

    return markdown(json.loads((RESULTS / "speed_options.json").read_text()))


def teacher_cache_table() -> str:
    """``benchmarks/teacher_cache_speed.py``'s committed run (``--json``): epoch times with and without the cache."""
    result = json.loads((RESULTS / "teacher_cache.json").read_text())
    rows = result["results"]
    sizes = ", ".join(f"{n:,}" for n in sorted({r["rows"] for r in rows}))
    load = "-".join(f"{v:.1f}" for v in (min(result["load_average"]), max(result["load_average"])))
    lines = [
        f"KD, batch 64, {sizes} rows per epoch, {result['device']}, load average {load}; median epoch times.",
        "",
        "| pair | without cache | warm cache | speedup | student alone | ceiling (without / alone) | warm / alone |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pair'].replace('cifar_', '')} | {r['uncached_s']:.2f} s | {r['warm_s']:.2f} s "
            f"| {r['speedup']:.2f}x | {r['alone_s']:.2f} s | {r['ceiling']:.2f}x | {r['warm_over_alone']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def beyond_cifar_table() -> str:
    from benchmarks.beyond_cifar import markdown

    return markdown(json.loads((RESULTS / "beyond_cifar.json").read_text()))


@dataclass(frozen=True)
class Block:
    """One generated part: the file that holds it, the marker name, and what renders it."""

    path: str
    name: str
    render: Callable[[], str]
    source: str

    @property
    def markers(self) -> tuple[str, str]:
        return f"<!-- {self.name}:start -->\n", f"<!-- {self.name}:end -->"


BLOCKS = (
    Block("README.md", "methods-table", methods_table, "the method registry (hf_distill.methods.table)"),
    Block(
        "docs/results.md", "default-run-table", default_run_table, "benchmarks/results/cifar10-short.jsonl"
    ),
    Block("docs/results.md", "results-table", results_table, "benchmarks/results/cifar10.jsonl"),
    Block("docs/results.md", "hetero-table", hetero_table, "benchmarks/results/cifar10-hetero.jsonl"),
    Block("docs/speed.md", "speed-table", throughput_table, "benchmarks/results/throughput.json"),
    Block("docs/speed.md", "reference-table", reference_table, "benchmarks/results/reference_steps.json"),
    Block(
        "docs/speed.md",
        "mdistiller-reviewkd",
        mdistiller_reviewkd_table,
        "benchmarks/results/reviewkd_mdistiller.json",
    ),
    Block("docs/speed.md", "speed-options", speed_options_table, "benchmarks/results/speed_options.json"),
    Block(
        "docs/speed.md", "teacher-cache-table", teacher_cache_table, "benchmarks/results/teacher_cache.json"
    ),
    Block("docs/beyond_cifar.md", "beyond-cifar", beyond_cifar_table, "benchmarks/results/beyond_cifar.json"),
)


def generate(repo: Path = REPO) -> dict[Path, tuple[str, str, list[Block]]]:
    """For every file with generated blocks: (its current text, its text with every block regenerated, the blocks
    that differ)."""
    from benchmarks.accuracy_report import splice

    out: dict[Path, tuple[str, str, list[Block]]] = {}
    for block in BLOCKS:
        path = repo / block.path
        if path not in out:
            text = path.read_text(encoding="utf-8")
            out[path] = (text, text, [])
        current, new, stale = out[path]
        updated = splice(new, *block.markers, block.render(), path)
        if updated != new:
            stale.append(block)
        out[path] = (current, updated, stale)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated part is stale")
    args = ap.parse_args(argv)
    try:
        files = generate()
    except ValueError as e:  # a missing marker
        print(f"error: {e}", file=sys.stderr)
        return 2
    stale = [block for _, _, blocks in files.values() for block in blocks]
    if args.check:
        for block in stale:
            print(f"stale: {block.path} <!-- {block.name} --> (from {block.source})")
        if stale:
            print("run `python scripts/make_docs.py` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    for path, (current, new, _) in files.items():
        if new != current:
            path.write_text(new, encoding="utf-8")
    from benchmarks.accuracy import Cifar10Protocol, code_version, read_rows
    from benchmarks.accuracy_report import plot

    plot(
        read_rows(RESULTS / "cifar10.jsonl")[0],
        Cifar10Protocol().hash(),
        code_version(),
        RESULTS / "cifar10.png",
    )
    for block in stale:
        print(f"rewrote {block.path} <!-- {block.name} -->")
    print(f"{len(BLOCKS)} generated blocks, {len(stale)} rewritten; chart {RESULTS / 'cifar10.png'} redrawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
