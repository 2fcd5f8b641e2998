"""Automatic layer pairing (``student_layers="auto"``): which student map each teacher map is compared with, for any
two backbones the feature taps read (docs/any_pair.md).

The choice is made from the shapes of a dry run of every offered layer (:class:`~hf_distill.features.FeatureSpec`,
transformer tokens laid out as maps on their patch grid), on the methods' side of the package: the models only say
what their layers give, the methods decide what to compare and own the trainable connectors. The rules:

* **stages**: every offered layer but the first (the stem, or a transformer's embedding output) that gives a
  (C, H, W) map; in a hierarchical network (CNNs, Swin: several strides) the deepest layer of each stride, in an
  isotropic one (a ViT: one stride) every block;
* **pairs** (:func:`auto_pairs`): ``k = min(stages of each side, MAX_AUTO_PAIRS)``; a hierarchical side gives its
  deepest k stages (so ImageNet CNNs meet at equal strides, e.g. 8/16/32), an isotropic side k blocks at evenly
  spaced depths ending with the last one (a transformers ViT's 12 blocks, k = 3: the 4th, 8th and 12th), paired
  shallow to deep;
* **a named side** (auto on one side only): each named layer meets the other side's stage of the same stride, else
  of the nearest relative depth;
* **per method** (:func:`method_role`): as many pairs as the method's default selector takes: all of them
  (``"stages"``, ``"all"``), the deepest (``"last"``: SP, FT) or the middle one (a position: FitNet's hint).

Each chosen pair is recorded as a :class:`LayerPair` (``DistillationMethod.pairing``) with the connector the method
built for it, logged once at setup and shown in the model card.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..features import AUTO, FeatureSpec, MapSelector

__all__ = [
    "LayerPair",
    "MAX_AUTO_PAIRS",
    "auto_pairs",
    "describe_module",
    "method_role",
    "network_stages",
    "pick_pairs",
    "resolve_auto",
]

#: the most pairs auto pairing makes (a CNN's four stages; a ViT's twelve blocks give four evenly spaced ones)
MAX_AUTO_PAIRS = 4
ROLES = ("all", "deepest", "middle")
_INT = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class LayerPair:
    """One teacher map compared with one student map, as a method uses it.

    Args:
        teacher: the teacher's layer name.
        teacher_shape: its map's shape (C, H, W) on the dry run.
        student: the student's layer name.
        student_shape: its map's shape.
        connector: what the method puts between them (channels, spatial size), in words.
        auto: chosen by auto pairing (False: named by the user or the method's default selectors).
    """

    teacher: str
    teacher_shape: tuple[int, ...]
    student: str
    student_shape: tuple[int, ...]
    connector: str
    auto: bool = False

    def line(self) -> str:
        """``teacher layer2 (128, 8, 8) -> student blocks.5 (192, 4, 4), connector: ...``"""
        return (
            f"teacher {self.teacher} {tuple(self.teacher_shape)} -> student {self.student} "
            f"{tuple(self.student_shape)}, connector: {self.connector}"
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (lists for shapes), for run records and model cards."""
        out = asdict(self)
        out["teacher_shape"], out["student_shape"] = list(self.teacher_shape), list(self.student_shape)
        return out


@dataclass(frozen=True)
class _Stage:
    name: str
    stride: tuple[int, int]


def _stride(spec: FeatureSpec, shape: tuple[int, ...]) -> tuple[int, int]:
    if spec.input_size is None:
        return (0, 0)  # unknown input size: every map of the network counts as one stride (depth decides)
    return (round(spec.input_size[0] / shape[1]), round(spec.input_size[1] / shape[2]))


def network_stages(spec: FeatureSpec, who: str, option: str) -> list[str]:
    """The stages of one network, shallow to deep (see the module's rules).

    Args:
        spec: the network's dry-run shapes of every offered layer (tokens laid out as maps).
        who: ``"student"`` or ``"teacher"``.
        option: the flag that names the layers instead, for the message.

    Raises:
        ValueError: no offered layer after the first gives a (C, H, W) map.
    """
    stages = [
        _Stage(n, _stride(spec, spec.maps[n])) for n in spec.names[1:] if len(spec.maps.get(n, ())) == 3
    ]
    if not stages:
        got = ", ".join(f"{n} {tuple(spec.maps[n])}" for n in spec.names if n in spec.maps) or "none"
        raise ValueError(
            f"auto pairing finds no stages in {spec.describe(who)}: no layer after the first gives a (C, H, W) map "
            f"(layers: {got}). Name the layers with {option}, or use a method on embeddings (kd, cc, rkd, pkt, crd)."
        )
    if len({s.stride for s in stages}) == 1:
        return [s.name for s in stages]  # isotropic (a ViT): every block
    deepest: dict[tuple[int, int], str] = {}
    for s in stages:
        deepest.pop(s.stride, None)
        deepest[s.stride] = s.name  # re-inserted: the dict keeps the order of each stride's deepest layer
    order = {n: i for i, n in enumerate(spec.names)}
    return sorted(deepest.values(), key=order.__getitem__)


def _isotropic(spec: FeatureSpec, stages: Sequence[str]) -> bool:
    return len({_stride(spec, spec.maps[n]) for n in stages}) == 1


def _pick(spec: FeatureSpec, stages: Sequence[str], k: int) -> list[str]:
    """k of a network's stages: the deepest k of a hierarchical network; of an isotropic one the blocks at
    depths j * n / k rounded half up (12 blocks, k = 4: the 3rd, 6th, 9th and 12th; 4 blocks, k = 3: 1st, 3rd, 4th)."""
    n = len(stages)
    if _isotropic(spec, stages) and n > 1:
        # the blocks at depths j * n / k (j = 1..k), each rounded half up to a whole block
        return [stages[(2 * j * n + k) // (2 * k) - 1] for j in range(1, k + 1)]
    return list(stages[-k:])


def _match(
    fixed: FeatureSpec, named: Sequence[str], other: FeatureSpec, other_stages: Sequence[str]
) -> list[str]:
    """For each named layer of one network, the other network's stage of the same stride (where the other is
    hierarchical and has it), else of the nearest relative depth."""
    by_stride = (
        {} if _isotropic(other, other_stages) else {_stride(other, other.maps[n]): n for n in other_stages}
    )
    depth = {n: i / max(len(fixed.names) - 1, 1) for i, n in enumerate(fixed.names)}
    out = []
    for name in named:
        shape = fixed.maps.get(name, ())
        same = by_stride.get(_stride(fixed, shape)) if len(shape) == 3 else None
        out.append(same or other_stages[round(depth[name] * (len(other_stages) - 1))])
    return out


def auto_pairs(
    student: FeatureSpec,
    teacher: FeatureSpec,
    student_named: Sequence[str] | None = None,
    teacher_named: Sequence[str] | None = None,
    method: str = "",
) -> list[tuple[str, str]]:
    """(student layer, teacher layer) pairs, shallow to deep.

    Args:
        student: the student's dry-run shapes of every offered layer.
        teacher: the teacher's.
        student_named: the student's layers when named (auto on the teacher's side only), else None.
        teacher_named: the teacher's layers when named (auto on the student's side only), else None.
        method: the method's name, for the flags named in errors.

    Raises:
        ValueError: a side has no stages (:func:`network_stages`).
    """
    flags = (
        f"--{method}-student-layers / --{method}-teacher-layers"
        if method
        else "student_layers / teacher_layers"
    )
    if teacher_named is not None:
        return list(
            zip(
                _match(teacher, teacher_named, student, network_stages(student, "student", flags)),
                teacher_named,
            )
        )
    s_stages = network_stages(student, "student", flags)
    if student_named is not None:
        return list(
            zip(
                student_named,
                _match(student, student_named, teacher, network_stages(teacher, "teacher", flags)),
            )
        )
    t_stages = network_stages(teacher, "teacher", flags)
    k = min(len(s_stages), len(t_stages), MAX_AUTO_PAIRS)
    return list(zip(_pick(student, s_stages, k), _pick(teacher, t_stages, k)))


def method_role(default_selector: object) -> str:
    """How many auto pairs a method takes, read from its default ``student_layers``: ``"deepest"`` for ``"last"``, ``"middle"``
    for a position (FitNet's hint layer 2 of [stem, stage1, stage2, stage3]), ``"all"`` otherwise."""
    if default_selector == "last":
        return "deepest"
    if isinstance(default_selector, int) or (
        isinstance(default_selector, str) and _INT.match(default_selector)
    ):
        return "middle"
    return "all"


def pick_pairs(pairs: Sequence[tuple[str, str]], role: str) -> list[tuple[str, str]]:
    """The pairs a method of ``role`` (:func:`method_role`) compares."""
    if role == "deepest":
        return list(pairs[-1:])
    if role == "middle":
        return [pairs[len(pairs) // 2]] if pairs else []
    return list(pairs)


def resolve_auto(
    student_sel: Sequence[MapSelector],
    teacher_sel: Sequence[MapSelector],
    student: FeatureSpec,
    teacher: FeatureSpec,
    role: str,
    method: str,
    resolve,
) -> tuple[list[str], list[str]]:
    """The layer names of a method whose selectors contain ``"auto"``.

    Args:
        student_sel: the student's selectors.
        teacher_sel: the teacher's selectors (empty: the method reads no teacher maps).
        student: the student's dry-run shapes of every offered layer.
        teacher: the teacher's.
        role: :func:`method_role` of the method.
        method: its name, for messages.
        resolve: :func:`~hf_distill.methods.base.resolve_selectors`, for a side that names its layers.

    Returns:
        (student layer names, teacher layer names).

    Raises:
        ValueError: ``"auto"`` beside other selectors on one side, or a side without stages.
    """
    for who, sel in (("student", student_sel), ("teacher", teacher_sel)):
        if AUTO in sel and len(sel) > 1:
            raise ValueError(
                f"{method}: 'auto' stands alone (got {', '.join(map(str, sel))} for the {who}); give "
                f"--{method}-{who}-layers auto, or name every layer."
            )
    s_auto, t_auto = AUTO in student_sel, AUTO in teacher_sel
    if not teacher_sel:  # the method reads the student's maps only (OFA's branches)
        names = network_stages(student, "student", f"--{method}-student-layers")
        return [s for s, _ in pick_pairs([(n, n) for n in names], role)], []
    s_named = None if s_auto else resolve(student_sel, student.names, "student")
    t_named = None if t_auto else resolve(teacher_sel, teacher.names, "teacher")
    pairs = auto_pairs(student, teacher, s_named, t_named, method)
    if s_auto and t_auto:
        pairs = pick_pairs(pairs, role)
    return [s for s, _ in pairs], [t for _, t in pairs]


_LEAF_NAMES = {
    nn.BatchNorm2d: "BN",
    nn.LayerNorm: "LN",
    nn.ReLU: "ReLU",
    nn.GELU: "GELU",
    nn.Sigmoid: "sigmoid",
}


def describe_module(module: nn.Module | None) -> str:
    """A connector in a few words: ``"none"``, ``"1x1 conv 64->128 + BN"``, ``"linear 192->256"``."""
    if module is None or isinstance(module, nn.Identity):
        return "none"
    parts: list[str] = []
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            k = "x".join(map(str, m.kernel_size))
            kind = "transposed conv" if isinstance(m, nn.ConvTranspose2d) else "conv"
            stride = f" stride {m.stride[0]}" if m.stride[0] > 1 else ""
            parts.append(f"{k} {kind}{stride} {m.in_channels}->{m.out_channels}")
        elif isinstance(m, nn.Linear):
            parts.append(f"linear {m.in_features}->{m.out_features}")
        elif type(m) in _LEAF_NAMES:
            parts.append(_LEAF_NAMES[type(m)])
    return " + ".join(parts) or type(module).__name__
