"""Method registry: ``--method kd`` -> :class:`~hf_distill.methods.kd.KD`, plus ready-made combinations."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import DistillationMethod

METHODS: dict[str, type[DistillationMethod]] = {}
PRESETS: dict[str, Preset] = {}

#: ``--method none``: plain cross-entropy training of the student (the no-distillation baseline).
BASELINE = "none"

#: names that changed (old -> new); the old one still works for a release, with a warning. ``ie_kd`` differed from
#: the method ``iekd`` by one underscore; presets that add KD are ``<method>_kd``.
RENAMED = {"ie_kd": "iekd_kd"}


@dataclass(frozen=True)
class Preset:
    """A ready combination of methods, e.g. ``crd_kd``.

    Args:
        methods: (method name, weight) pairs.
        ce_weight: the cross-entropy weight.
        kwargs: per-method keyword arguments, e.g. ``{"skd": {"base": "dkd"}}``.
        description: one line for ``--help`` and the README.
    """

    methods: tuple[tuple[str, float], ...]
    ce_weight: float = 1.0
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""


def canonical(name: str) -> str:
    """The registry spelling of a method or option name: ``" Crd-KD "`` -> ``"crd_kd"`` (flags use dashes)."""
    return str(name).strip().lower().replace("-", "_")


def register_method(name: str) -> Callable[[type[DistillationMethod]], type[DistillationMethod]]:
    """Class decorator: make a :class:`DistillationMethod` available as ``--method <name>``."""

    def wrap(cls: type[DistillationMethod]) -> type[DistillationMethod]:
        if not (isinstance(cls, type) and issubclass(cls, DistillationMethod)):
            raise TypeError(
                f"@register_method({name!r}) must decorate a DistillationMethod subclass, got {cls!r}"
            )
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(
                f"Distillation method {name!r} is already registered by {METHODS[name].__qualname__}"
            )
        if name in PRESETS or name == BASELINE:
            raise ValueError(f"{name!r} is already the name of a preset combination")
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def register_preset(name: str, preset: Preset) -> None:
    """Register a ready combination of methods under ``name`` (e.g. ``crd_kd``)."""
    if name in METHODS or name == BASELINE:
        raise ValueError(f"{name!r} is already the name of a distillation method")
    PRESETS[name] = preset


def known_names() -> list[str]:
    return sorted(METHODS) + sorted(PRESETS) + [BASELINE]


def get_method(name: str) -> type[DistillationMethod]:
    """Look a method class up by name, with an error that lists the known ones."""
    key = canonical(name)
    if key not in METHODS:
        raise ValueError(unknown_method_message(name))
    return METHODS[key]


def unknown_method_message(name: str) -> str:
    return (
        f"Unknown distillation method {name!r}. Known methods: {', '.join(sorted(METHODS))}; "
        f"combinations: {', '.join(sorted(PRESETS)) or '-'}; '{BASELINE}' for no distillation. "
        "Combine methods with a comma list, e.g. --method kd,crd --method_weights 1.0,0.8."
    )


@dataclass(frozen=True)
class ObjectiveSpec:
    """A fully resolved objective: which methods, their weights and kwargs, and the CE weight."""

    methods: tuple[str, ...]
    weights: tuple[float, ...]
    ce_weight: float
    kwargs: dict[str, dict[str, Any]]


def current_name(name: str) -> str:
    """``name`` in the registry's spelling, an old name (:data:`RENAMED`) replaced by its new one with a warning."""
    key = canonical(name)
    if key in RENAMED:
        warnings.warn(
            f"--method {key} is now called {RENAMED[key]}; the old name will stop working in the next release",
            FutureWarning,
            stacklevel=3,
        )
        return RENAMED[key]
    return key


def parse_method_list(method: str | Sequence[str]) -> list[str]:
    if isinstance(method, str):
        names = [m for m in (p.strip() for p in method.split(",")) if m]
    else:
        names = [str(m).strip() for m in method]
    return [current_name(n) for n in names]


def check_weights(weights: Mapping[str, float], ce_weight: float, flags: bool = False) -> None:
    """Refuse a negative or non-finite loss weight: a negative one makes the optimizer climb its term (gradient
    ascent, the loss heading below zero without bound); 0 is the way to switch a term off.

    Args:
        weights: method name -> weight.
        ce_weight: the cross-entropy weight.
        flags: name the command-line flags (``--method_weights``, ``--ce_weight``) in the message.

    Raises:
        ValueError: one line naming the weight.
    """
    named = {("--ce_weight" if flags else "ce_weight"): ce_weight}
    for m, w in weights.items():
        named[f"{m}'s weight in --method_weights" if flags else f"the weight of {m}"] = w
    for what, w in named.items():
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(
                f"{what} is {w:g}: loss weights must be finite and >= 0 (a negative weight trains by gradient "
                "ascent on its term). Use 0 to switch a term off."
            )


def resolve_objective(
    method: str | Sequence[str],
    weights: Sequence[float] | None = None,
    ce_weight: float | None = None,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
) -> ObjectiveSpec:
    """Resolve ``--method``/``--method_weights``/``--ce_weight`` into an :class:`ObjectiveSpec`.

    Defaults follow RepDistiller's ``-r/-a/-b``: a single method uses its own ``default_weight`` and
    ``default_ce_weight`` (KD alone: CE 0.1, KD 0.9); a preset uses its weights; a list of several methods uses each
    method's ``combo_weight`` (KD 1.0) or ``default_weight`` and CE weight 1.0 (RepDistiller's CRD+KD runs).

    Raises:
        ValueError: unknown method, duplicated method, or a weight list of the wrong length.
    """
    names = parse_method_list(method)
    if not names:
        raise ValueError(
            f"No distillation method given. Pass --method with one of: {', '.join(known_names())}."
        )
    kwargs: dict[str, dict[str, Any]] = {}
    # a method's default weights may depend on its hyperparameters (SKD takes those of its --skd-base)
    user_kw = {canonical(m): kw for m, kw in (method_kwargs or {}).items()}
    expanded: list[str] = []
    default_w: list[float] = []
    default_ce: float | None = None
    for n in names:
        if n == BASELINE:
            continue
        if n in PRESETS:
            p = PRESETS[n]
            for m, w in p.methods:
                expanded.append(m)
                default_w.append(w)
            for m, kw in p.kwargs.items():
                kwargs.setdefault(m, {}).update(kw)
            default_ce = p.ce_weight if len(names) == 1 else 1.0
        elif n in METHODS:
            expanded.append(n)
            default_w.append(METHODS[n].default_weights(user_kw.get(n))[0])
        else:
            raise ValueError(unknown_method_message(n))
    if BASELINE in names and expanded:
        raise ValueError(
            f"--method '{BASELINE}' means no distillation; it cannot be combined with {expanded}."
        )
    dup = sorted({m for m in expanded if expanded.count(m) > 1})
    if dup:
        raise ValueError(f"Method(s) {', '.join(dup)} appear more than once in --method {','.join(names)}.")
    if len(expanded) > 1 and not any(n in PRESETS for n in names):
        combos = [METHODS[m].default_weights(user_kw.get(m))[2] for m in expanded]
        default_w = [c if c is not None else w for c, w in zip(combos, default_w)]
    if default_ce is None:
        default_ce = (
            METHODS[expanded[0]].default_weights(user_kw.get(expanded[0]))[1] if len(expanded) == 1 else 1.0
        )
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(expanded):
            raise ValueError(
                f"--method_weights has {len(weights)} value(s) but the methods are {len(expanded)}: "
                f"{', '.join(expanded) or '(none)'}. Give one weight per method, in that order "
                f"(defaults: {','.join(f'{w:g}' for w in default_w)})."
            )
    final_w = tuple(weights) if weights is not None else tuple(default_w)
    final_ce = float(ce_weight if ce_weight is not None else default_ce)
    check_weights(dict(zip(expanded, final_w)), final_ce, flags=True)
    for m, kw in (method_kwargs or {}).items():
        key = canonical(m)
        if key not in expanded:
            raise ValueError(
                f"Arguments were given for method {m!r}, which is not in --method ({', '.join(expanded) or 'none'})."
            )
        kwargs.setdefault(key, {}).update(kw)
    return ObjectiveSpec(tuple(expanded), final_w, final_ce, kwargs)


def instantiate(name: str, kwargs: dict[str, Any] | None = None) -> DistillationMethod:
    """Build one method, with a clear error for a hyperparameter it does not have.

    Deprecated hyperparameter names are accepted with a ``FutureWarning`` (:meth:`DistillationMethod.upgrade_kwargs`).
    """
    cls = get_method(name)
    kwargs = cls.upgrade_kwargs(dict(kwargs or {}))
    valid = cls.hyperparameters()
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ValueError(
            f"Method {name!r} has no hyperparameter(s) {', '.join(bad)}. "
            f"Its hyperparameters are: {', '.join(f'{k}={v!r}' for k, v in valid.items()) or 'none'}."
        )
    return cls(**kwargs)
