"""The README's table of methods, generated from the registry (``python -m hf_distill.methods.table``).

A test compares README.md with this output, so the documentation cannot drift from the code.
"""

from __future__ import annotations

from .base import FeatureNeeds, MapSelector
from .registry import METHODS, PRESETS, instantiate


def _maps(maps: tuple[MapSelector, ...]) -> str:
    return "/".join(str(m) for m in maps)


def _needs(n: FeatureNeeds) -> str:
    parts = []
    if n.logits:
        parts.append("logits")
    if n.embedding:
        parts.append("embedding")
    if n.maps:
        parts.append(f"maps ({_maps(n.maps)}{', pre-act' if n.preact else ''})")
    return ", ".join(parts) or "-"


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


def method_rows() -> list[str]:
    rows = [
        "| method | what it matches | paper | student / teacher features | weight (CE weight) | hyperparameters "
        "(defaults) | init stage | min batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(METHODS):
        cls = METHODS[name]
        m = instantiate(name)
        n = m.needs()
        feats = f"{_needs(n.student)} / {_needs(n.teacher)}" + (" + row index" if n.index else "")
        hp = ", ".join(f"{k}={_value(v)}" for k, v in cls.hyperparameters().items())
        init = f"{m.init_stage.epochs:g} epochs" if m.init_stage is not None else "-"
        rows.append(
            f"| `{name}` | {cls.summary} | {cls.paper} | {feats} | {cls.default_weight:g} ({cls.default_ce_weight:g}) "
            f"| {hp or '-'} | {init} | {m.min_batch_size} |"
        )
    return rows


def preset_rows() -> list[str]:
    rows = ["| preset | methods (weights) | CE weight | what |", "|---|---|---|---|"]
    for name in sorted(PRESETS):
        p = PRESETS[name]
        ms = ", ".join(f"{m} ({w:g})" for m, w in p.methods)
        rows.append(f"| `{name}` | {ms} | {p.ce_weight:g} | {p.description} |")
    return rows


def markdown() -> str:
    return "\n".join(method_rows()) + "\n\nPresets:\n\n" + "\n".join(preset_rows()) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
