"""What ``--help_method NAME`` (or ``--method NAME --help``) prints: a method's or preset's hyperparameters, as
``--<method>-<name>`` flags, with their defaults and meanings (read from the method class's ``Args:`` docstring)."""

from __future__ import annotations

import inspect
import re

from ..methods import METHODS, PRESETS, canonical
from ..methods.registry import unknown_method_message


def documented_arguments(cls: type) -> dict[str, str]:
    """``name -> meaning`` from the ``Args:`` section of a class's docstring (continuation lines joined)."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)*)", doc, flags=re.MULTILINE)
    if not match:
        return {}
    out: dict[str, str] = {}
    current = None
    for line in match.group(1).splitlines():
        entry = re.match(r"^ {4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if entry:
            current = entry.group(1)
            out[current] = entry.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def _flag(method: str, name: str) -> str:
    return f"--{method}-{name.replace('_', '-')}"


def method_help(name: str) -> str:
    """The help text of one method or preset.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    key = canonical(name)
    if key in PRESETS:
        preset = PRESETS[key]
        parts = ", ".join(f"{m} (weight {w:g})" for m, w in preset.methods)
        lines = [
            f"{key} (preset): {preset.description}",
            f"  methods: {parts}; CE weight {preset.ce_weight:g}",
            "",
        ]
        return "\n".join(lines) + "\n".join(method_help(m) for m, _ in preset.methods)
    if key not in METHODS:
        raise ValueError(unknown_method_message(name))
    cls = METHODS[key]
    meanings = documented_arguments(cls)
    lines = [
        f"{key}: {cls.summary}",
        f"  paper: {cls.paper}",
        f"  default weight {cls.default_weight:g} (CE weight {cls.default_ce_weight:g}); set with --method_weights "
        "and --ce_weight",
    ]
    params = cls.hyperparameters()
    lines.append("  hyperparameters:" if params else "  no hyperparameters")
    for param, default in params.items():
        meaning = meanings.get(param, "")
        lines.append(f"    {_flag(key, param)} (default {default!r}){': ' + meaning if meaning else ''}")
    return "\n".join(lines) + "\n"


def methods_line() -> str:
    """Every method and preset, for ``--method``'s help."""
    return f"methods: {', '.join(sorted(METHODS))}; presets: {', '.join(sorted(PRESETS))}"


__all__ = ["documented_arguments", "method_help", "methods_line"]
