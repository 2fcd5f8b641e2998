"""The tables and bar chart of ``benchmarks/accuracy.py`` in ``docs/results.md``, generated from its results files.

Only rows of the current protocol (hash) and code version enter the table; the others are counted and named under it
("shown apart"), never mixed in. Unreadable lines (a foreign or truncated file) are counted the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.accuracy import BASELINE, REPO, TEACHER, Cifar10Protocol, code_version, read_rows
from hf_distill.run.benchmark_configs import benchmark_config

START = "<!-- results-table:start -->\n"
END = "<!-- results-table:end -->"


@dataclass
class MethodStats:
    """One line of the table: a method's runs over seeds."""

    method: str
    top1: list[float]
    top5: list[float]
    train_seconds: list[float]
    init_stage_seconds: list[float]

    @property
    def n(self) -> int:
        return len(self.top1)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.top1) if self.n > 1 else None


def published_top1(method: str, pair: str = "resnet56_resnet20") -> str:
    """The published CIFAR-100 top-1 of ``method`` for ``pair``, from the header of its benchmark config."""
    try:
        header = benchmark_config(method, pair)[0]
    except ValueError:  # no benchmark config for it (mutual learning, an unknown name)
        return "–"
    m = re.search(r"Published top-1: ([0-9.]+)", header)
    return m.group(1) if m else "–"


def select(rows: list[dict[str, Any]], protocol_hash: str, version: str) -> tuple[list[dict], list[dict]]:
    """(rows of this protocol and code version, the others). Among the selected, a second dataset copy (another
    data fingerprint than the most common) is set apart too."""
    mine = [r for r in rows if r["protocol_hash"] == protocol_hash and r["code_version"] == version]
    other = [r for r in rows if r not in mine]
    if mine:
        counts: dict[Any, int] = defaultdict(int)
        for r in mine:
            counts[r["data"]] += 1
        data = max(counts, key=counts.get)
        other += [r for r in mine if r["data"] != data]
        mine = [r for r in mine if r["data"] == data]
    return mine, other


def method_stats(rows: list[dict[str, Any]]) -> dict[str, MethodStats]:
    by: dict[str, MethodStats] = {}
    for r in sorted(rows, key=lambda r: (r["method"], r["seed"])):
        if r["method"] == TEACHER or r["top1"] is None:
            continue
        s = by.setdefault(r["method"], MethodStats(r["method"], [], [], [], []))
        s.top1.append(float(r["top1"]))
        s.top5.append(float(r.get("top5") or math.nan))
        s.train_seconds.append(float(r.get("train_seconds") or 0.0))
        s.init_stage_seconds.append(float(r.get("init_stage_seconds") or 0.0))
    return by


def verdict(s: MethodStats, base: MethodStats | None) -> str:
    """ahead / behind when the mean gain exceeds twice its standard error (both sides need 2+ seeds), else
    'within noise'. A single-seed row is unresolved: it is called ahead or behind only when its gain exceeds twice
    the standard error it would have with the baseline's seed spread, else within noise."""
    if base is None:
        return ""
    gain = s.mean - base.mean
    if base.n < 2:
        return "1 seed: " + ("ahead" if gain > 0 else "behind") + " (unresolved)"
    if s.n < 2:
        se = base.std * math.sqrt(1 + 1 / base.n)  # one run's noise taken as the baseline's
        side = "ahead" if gain > 2 * se else "behind" if gain < -2 * se else "within noise"
        return f"1 seed: {side} (unresolved)"
    se = math.sqrt(s.std**2 / s.n + base.std**2 / base.n)
    if gain > 2 * se:
        return "**ahead**"
    if gain < -2 * se:
        return "behind"
    return "within noise"


def _pct(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or math.isnan(v) else f"{100 * v:.{digits}f}"


def render_table(
    rows: list[dict[str, Any]],
    protocol_hash: str,
    version: str,
    bad_lines: int = 0,
    published_pair: str | None = "resnet56_resnet20",
) -> str:
    """The markdown table of one protocol and code version (the block between the ``results-table`` markers), with
    the published CIFAR-100 top-1 of ``published_pair``'s configs as the last column (None: no such column, for a
    pair the papers did not run)."""
    mine, other = select(rows, protocol_hash, version)
    stats = method_stats(mine)
    base = stats.get(BASELINE)
    teacher = [r for r in mine if r["method"] == TEACHER and r["top1"] is not None]
    published = (
        "" if published_pair is None else f" published CIFAR-100 top-1 ({published_pair.replace('_', '→')}) |"
    )
    lines = [
        f"Protocol `{protocol_hash}`, code version `{version}`: {len(mine)} runs.",
        "",
        "| method | seeds | top-1 % (mean ± std) | gain vs baseline (points) | verdict | top-5 % | train min | "
        "init stage min |" + published,
        "|---|---|---|---|---|---|---|---|" + ("---|" if published else ""),
    ]
    if teacher:
        lines.append(f"| teacher (resnet56) | – | {_pct(teacher[0]['top1'])} | – | – | {_pct(teacher[0].get('top5'))} "
                     "| – | – |" + (" 72.34 |" if published else ""))  # fmt: skip
    order = sorted(stats.values(), key=lambda s: (s.method != BASELINE, -s.mean, s.method))
    for s in order:
        std = f" ± {100 * s.std:.2f}" if s.std is not None else ""
        gain = "–" if base is None or s is base else f"{100 * (s.mean - base.mean):+.2f}"
        name = "none (baseline: no distillation)" if s.method == BASELINE else f"`{s.method}`"
        init = statistics.fmean(s.init_stage_seconds) / 60
        lines.append(
            f"| {name} | {s.n} | {_pct(s.mean)}{std} | {gain} | {'' if s is base else verdict(s, base)} | "
            f"{_pct(statistics.fmean(s.top5))} | {statistics.fmean(s.train_seconds) / 60:.1f} | {init:.1f} |"
            + (f" {published_top1(s.method, published_pair)} |" if published else "")
        )
    verdicts: dict[str, list[str]] = defaultdict(list)
    for s in order:
        if s is not base and base is not None:
            v = verdict(s, base).replace("*", "")
            verdicts["ahead of the baseline" if v == "ahead" else "behind it" if v == "behind" else
                     "within seed noise of it" if v == "within noise" else "single seed so far"].append(f"`{s.method}`")  # fmt: skip
    if verdicts:
        lines += ["", "; ".join(f"{k.capitalize() if i == 0 else k}: {', '.join(v)}" for i, (k, v) in
                                 enumerate(verdicts.items())) + "."]  # fmt: skip
    if other or bad_lines:
        kinds = sorted({(r.get("protocol_hash"), r.get("code_version")) for r in other}, key=str)
        apart = ", ".join(f"protocol `{p}` / code `{v}`" for p, v in kinds)
        lines += ["", f"Not in the table: {len(other)} rows of other protocols, code versions or data copies"
                  + (f" ({apart})" if apart else "") + (f", {bad_lines} unreadable lines" if bad_lines else "") + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def render_curve(rows: list[dict[str, Any]], definition: dict[str, Any], version: str) -> str:
    """The baseline's final test accuracy against the epoch budget (the protocol measurement)."""
    same = {k: v for k, v in definition.items() if k != "epochs"}
    picked: dict[float, list[float]] = defaultdict(list)
    minutes: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        d = dict(r.get("definition") or {})
        if r["method"] != BASELINE or r["code_version"] != version or r["top1"] is None:
            continue
        if {k: v for k, v in d.items() if k != "epochs"} != same:
            continue
        picked[float(d["epochs"])].append(float(r["top1"]))
        minutes[float(d["epochs"])].append(float(r.get("train_seconds") or 0) / 60)
    if not picked:
        return "No epoch-budget measurement yet (`--epoch_curve`).\n"
    lines = ["| epochs | baseline top-1 % | seeds | train min |", "|---|---|---|---|"]
    for e in sorted(picked):
        lines.append(f"| {e:g} | {_pct(statistics.fmean(picked[e]))} | {len(picked[e])} | "
                     f"{statistics.fmean(minutes[e]):.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], protocol_hash: str, version: str, path: Path) -> bool:
    """Horizontal bars of top-1 (mean, error bar = std over seeds), the baseline as a dashed line."""
    mine, _ = select(rows, protocol_hash, version)
    stats = sorted(method_stats(mine).values(), key=lambda s: s.mean)
    if not stats:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(stats) + 1.5))
    y = range(len(stats))
    ax.barh(list(y), [100 * s.mean for s in stats], xerr=[100 * (s.std or 0) for s in stats], capsize=3,
            color=["#999999" if s.method == BASELINE else "#4c72b0" for s in stats])  # fmt: skip
    ax.set_yticks(list(y), [f"{s.method} (n={s.n})" for s in stats])
    base = next((s for s in stats if s.method == BASELINE), None)
    if base is not None:
        ax.axvline(100 * base.mean, color="k", ls="--", lw=1, label="baseline (no distillation)")
        ax.legend(loc="lower right")
    lo = min(100 * s.mean - 100 * (s.std or 0) for s in stats)
    ax.set_xlim(max(0.0, lo - 3), None)
    ax.set_xlabel("CIFAR-10 test top-1 % (10,000 images)")
    ax.set_title(f"resnet56 -> resnet20, protocol {protocol_hash}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def results_block(results: Path, protocol: Any) -> str:
    """Everything between the ``results-table`` markers of ``docs/results.md``, from the results file."""
    rows, bad = read_rows(results)
    version = code_version()
    return (
        render_table(rows, protocol.hash(), version, bad)
        + "\nBaseline accuracy against the epoch budget (seed 0):\n\n"
        + render_curve(rows, protocol.definition(), version)
    )


def hetero_block(results: Path, protocol: Cifar10Protocol, reference: Path) -> str:
    """The table of another pair than the protocol's default (``docs/results.md``, heterogeneous pair), then, for
    comparison, the rows of ``reference`` with the same protocol but the default student.

    No published column: the papers did not run these pairs on this data.
    """
    rows, bad = read_rows(results)
    version = code_version()
    out = render_table(rows, protocol.hash(), version, bad, published_pair=None)
    same = dataclasses.replace(protocol, student=Cifar10Protocol.student)
    ref_rows, _ = read_rows(reference)
    ref = method_stats(select(ref_rows, same.hash(), version)[0])
    shown = method_stats(select(rows, protocol.hash(), version)[0])
    cells = [_stats_cell(ref[m]) for m in sorted(ref, key=lambda m: (m != BASELINE, m)) if m in shown]
    if cells:
        where = reference.relative_to(REPO) if reference.is_relative_to(REPO) else reference
        out += (f"\nThe same protocol with the default student `{same.student}` (protocol `{same.hash()}`, rows of "
                f"`{where}`): " + ", ".join(cells) + ".\n")  # fmt: skip
    return out


def _stats_cell(s: MethodStats) -> str:
    """``'`kd` 45.49 ± 2.33% (3 seeds)'``: mean ± std over seeds."""
    std = f" ± {100 * s.std:.2f}" if s.std is not None else ""
    return f"`{s.method}` {_pct(s.mean)}{std}% ({s.n} seed{'s' if s.n > 1 else ''})"


def default_run_table(results: Path) -> str:
    """The default run's configuration measured: the student alone and KD per epoch budget, mean ± std over seeds,
    and KD's gain paired by seed (rows of ``benchmarks/results/cifar10-short.jsonl``)."""
    rows, _ = read_rows(results)
    top1: dict[float, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    per_class = set()
    for r in rows:
        if r["method"] in (BASELINE, "kd") and r["top1"] is not None:
            top1[float(r["definition"]["epochs"])][r["method"]][r["seed"]] = 100 * float(r["top1"])
            per_class.add(r["definition"]["per_class"])
    images = " / ".join(f"{10 * n:,}" for n in sorted(per_class))
    lines = [
        f"| {images} training images | seeds | student trained alone (`--method none`) | KD student "
        "| KD's gain, paired by seed |",
        "|---|---|---|---|---|",
    ]
    for epochs in sorted(top1, reverse=True):
        alone, kd = top1[epochs][BASELINE], top1[epochs]["kd"]
        seeds = sorted(set(alone) & set(kd))
        gains = [kd[s] - alone[s] for s in seeds]
        cells = [_mean_std([alone[s] for s in seeds]), _mean_std([kd[s] for s in seeds])]
        lines.append(
            f"| {epochs:g} epochs | {', '.join(map(str, seeds))} | {cells[0]}% | {cells[1]}% "
            f"| {_mean_std(gains, sign=True)} points |"
        )
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float], sign: bool = False) -> str:
    mean = f"{statistics.fmean(values):{'+' if sign else ''}.2f}"
    return mean + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def splice(text: str, start: str, end: str, body: str, where: object) -> str:
    """``text`` with what lies between the markers ``start`` and ``end`` replaced by ``body``.

    Raises:
        ValueError: a marker is missing (``where`` names the file).
    """
    if start not in text or end not in text:
        raise ValueError(
            f"{where} lacks the markers {start.strip()} ... {end}: add them where the table goes."
        )
    head, rest = text.split(start, 1)
    return head + start + body + end + rest.split(end, 1)[1]


def write_report(results: Path, doc: Path, chart: Path, protocol: Any) -> str:
    """Write the results table into ``doc`` (between its ``results-table`` markers) and the chart; returns a
    one-line summary.

    Raises:
        ValueError: no results file, none of its rows belongs to this protocol and code version, or ``doc`` lacks
            the markers.
    """
    if not results.exists():
        raise ValueError(f"No results file {results}: run benchmarks/accuracy.py first (or pass --results).")
    rows, _ = read_rows(results)
    mine, other = select(rows, protocol.hash(), code_version())
    if not mine:
        raise ValueError(
            f"{results} has no row of protocol {protocol.hash()} with code version {code_version()} "
            f"({len(other)} rows of other protocols/versions): rerun the benchmark, or report with the code that "
            "wrote them."
        )
    text = splice(doc.read_text(encoding="utf-8"), START, END, results_block(results, protocol), doc)
    doc.write_text(text, encoding="utf-8")
    drawn = plot(rows, protocol.hash(), code_version(), chart)
    return f"{len(mine)} rows -> {doc}" + (f", {chart}" if drawn else "")
