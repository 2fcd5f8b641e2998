"""Helpers shared by the methods that compare intermediate feature maps (FitNet, AT, SP, VID, NST, AB, FSP, FT,
IE-KD).

* :func:`parse_selectors` / :func:`parse_single_selector`: turn a layer-selection hyperparameter into map selectors
  (see ``hf_distill.methods.base.MapSelector``);
* :func:`check_pairing`: the student and the teacher selected the same number of maps (paired one to one);
* :func:`check_conv_maps`: the selected maps are convolutional (C, H, W) maps, not transformer tokens (N, D);
* :class:`PairedMaps`: the selection hyperparameters, ``needs`` and those checks of the methods that compare maps
  paired one to one (AT, SP, VID, NST, AB, FSP);
* :func:`pool_to_common_size`: RepDistiller's way of pairing maps of different spatial sizes;
* :data:`LAYER_REDUCTIONS`, :func:`check_layer_reduction`, :func:`reduce_layers`: combining per-layer losses.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from .base import FeatureNeeds, FeatureSpec, MapSelector, MethodNeeds

__all__ = [
    "LAYER_REDUCTIONS",
    "PairedMaps",
    "check_conv_maps",
    "check_layer_reduction",
    "check_pairing",
    "layer_options",
    "parse_layer_pair",
    "parse_selectors",
    "parse_single_selector",
    "pool_to_common_size",
    "reduce_layers",
]

_INT = re.compile(r"^[+-]?\d+$")
_SELECTOR_HELP = (
    "use 'stages', 'last', 'all', layer names or integer positions, comma-separated (e.g. 'stage1,stage3' or "
    "'1,-1')"
)
LAYER_REDUCTIONS = ("sum", "mean")


def parse_selectors(value: str | int | Sequence[MapSelector], option: str) -> tuple[MapSelector, ...]:
    """Turn a map-selection hyperparameter into selectors.

    Accepts a selector (``"stages"``, ``"last"``, ``"all"``, an int position, a layer name), a comma list of them as
    one string (``"stage1,stage3"``, ``"1,-1"``; integer-looking items become positions, as on the command line) or a
    list/tuple of them.

    Args:
        value: the hyperparameter value.
        option: the hyperparameter's command-line flag (e.g. ``"--at-student_maps"``), for the error messages.

    Returns:
        The selectors, in order.

    Raises:
        ValueError: nothing selected, an empty item (``"stage1,,stage3"``), or an unsupported type.
    """
    if isinstance(value, bool):  # bool is an int subclass: reject it explicitly
        raise ValueError(f"{option} must select feature maps, got {value!r}; {_SELECTOR_HELP}.")
    if isinstance(value, numbers.Integral):
        return (int(value),)
    if isinstance(value, str):
        items: list[object] = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(
            f"{option} must be a layer selector, a comma list or a list of them, got {type(value).__name__}; "
            f"{_SELECTOR_HELP}."
        )
    if all(isinstance(it, str) and not it.strip() for it in items):
        raise ValueError(f"{option} selects no feature layer (got {value!r}); {_SELECTOR_HELP}.")
    out: list[MapSelector] = []
    for it in items:
        if isinstance(it, bool) or not isinstance(it, (numbers.Integral, str)):
            raise ValueError(f"{option}: bad layer selector {it!r} in {value!r}; {_SELECTOR_HELP}.")
        if isinstance(it, str):
            it = it.strip()
            if not it:
                raise ValueError(f"{option} contains an empty layer selector: {value!r}; {_SELECTOR_HELP}.")
            out.append(int(it) if _INT.match(it) else it)
        else:
            out.append(int(it))
    return tuple(out)


def parse_single_selector(value: MapSelector, option: str) -> MapSelector:
    """Like :func:`parse_selectors`, for a hyperparameter that must select exactly one map.

    Group selectors that stand for several maps (``"stages"``, ``"all"``) are rejected; ``"last"``, a layer name and
    an integer position (also as a string such as ``"2"`` or ``"-1"``) are accepted.

    Raises:
        ValueError: the value selects no map or more than one.
    """
    sel = parse_selectors(value, option)
    if len(sel) != 1 or sel[0] in ("stages", "all"):
        raise ValueError(
            f"{option} must select exactly one feature map, got {value!r}; use a layer name, an integer position "
            "or 'last'."
        )
    return sel[0]


def layer_options(method: str) -> str:
    """The flags that select a method's feature layers, for error messages."""
    return f"--{method}-student-layers / --{method}-teacher-layers"


def parse_layer_pair(
    student_layers: str | int | Sequence[MapSelector],
    teacher_layers: str | int | Sequence[MapSelector] | None,
    method: str,
    single: bool = False,
) -> tuple[tuple[MapSelector, ...], tuple[MapSelector, ...]]:
    """Parse a method's ``student_layers`` / ``teacher_layers`` hyperparameters into map selectors.

    Args:
        student_layers: the student's selectors.
        teacher_layers: the teacher's; empty or None: the student's selectors, resolved against the teacher.
        method: the method's name, for the flags named in errors.
        single: each side must select exactly one map (:func:`parse_single_selector`).

    Returns:
        (student selectors, teacher selectors).
    """

    def parse(value: str | int | Sequence[MapSelector], side: str) -> tuple[MapSelector, ...]:
        option = f"--{method}-{side}-layers"
        return (parse_single_selector(value, option),) if single else parse_selectors(value, option)

    s = parse(student_layers, "student")
    t = s if teacher_layers is None or teacher_layers == "" else parse(teacher_layers, "teacher")
    return s, t


def check_pairing(
    student_layer_names: Sequence[str], teacher_layer_names: Sequence[str], method: str, options: str
) -> None:
    """Raise a clear error when the selected student and teacher maps cannot be paired one to one.

    Args:
        student_layer_names: the student's selected layer names.
        teacher_layer_names: the teacher's selected layer names.
        method: the method's name, for the message.
        options: the flags that select the layers, e.g. ``"--at-student_maps / --at-teacher_maps"``.
    """
    if len(student_layer_names) != len(teacher_layer_names) or not student_layer_names:
        raise ValueError(
            f"{method} pairs student and teacher feature maps one to one, but {len(student_layer_names)} student and "
            f"{len(teacher_layer_names)} teacher maps are selected (student: {', '.join(student_layer_names) or 'none'}; "
            f"teacher: {', '.join(teacher_layer_names) or 'none'}; the networks have different numbers of stages?). "
            f"Select the same number on both sides with {options}, e.g. 'stage1,stage2,stage3' or '1,2,-1'."
        )


def check_conv_maps(spec: FeatureSpec, names: Iterable[str], who: str, method: str, option: str) -> None:
    """Raise a clear error unless every selected map of one network is a convolutional (C, H, W) map.

    Args:
        spec: the network's shapes from the dry run.
        names: the selected layer names.
        who: ``"student"`` or ``"teacher"``.
        method: the method's name, for the message.
        option: the flag that selects these layers (e.g. ``"--ft-student_layer"``), for the message.
    """
    for name in names:
        shape = spec.maps.get(name)
        if shape is None or len(shape) != 3:
            got = "no recorded shape" if shape is None else f"shape {tuple(shape)} (transformer tokens?)"
            raise ValueError(
                f"{method} needs convolutional (C, H, W) feature maps, but {spec.layer(who, name)} has {got}. "
                f"Choose convolutional layers with {option}, use a CNN (CIFAR zoo, timm CNN) for {method}, or use "
                "a method that works on embeddings or tokens (e.g. kd, cc, rkd, pkt, sp)."
            )


def pool_to_common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the spatially larger of two (B, C, H, W) maps down to the smaller size.

    RepDistiller does this for AT, VID, NST, FSP and FactorTransfer (comparing heights only, for square maps);
    height and width are matched independently here, the same for square maps and also right for non-square ones.

    Args:
        a: (B, Ca, Ha, Wa).
        b: (B, Cb, Hb, Wb).

    Returns:
        ``a`` and ``b`` with spatial size (min(Ha, Hb), min(Wa, Wb)); a map already at that size is returned as is.
    """
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def check_layer_reduction(value: str, method: str) -> None:
    """Raise a clear error unless ``value`` is one of :data:`LAYER_REDUCTIONS`."""
    if value not in LAYER_REDUCTIONS:
        raise ValueError(f"{method} layer_reduction must be one of {LAYER_REDUCTIONS}, got {value!r}")


def reduce_layers(losses: Sequence[Tensor], reduction: str = "sum") -> Tensor:
    """Combine per-layer losses, added in order: ``"sum"`` (RepDistiller's ``sum(loss_group)``) or ``"mean"``."""
    if not losses:
        raise ValueError("no per-layer losses to combine (no pair of feature maps was selected)")
    total = losses[0]
    for v in losses[1:]:
        total = total + v
    return total if reduction == "sum" else total / len(losses)


class PairedMaps:
    """Mixin of the methods that compare student and teacher feature maps paired one to one, the maps selected by
    hyperparameters: ``student_maps`` / ``teacher_maps`` (AT, SP, VID) or ``layers`` / ``layers_teacher`` (NST, AB,
    FSP; ``layers`` selects both networks' maps, a non-empty ``layers_teacher`` the teacher's instead).

    ``__init__`` calls :meth:`select_maps` or :meth:`select_layers`, which keep the hyperparameters as given (for
    ``hparams()``) and parse them; :meth:`needs` asks for the selected maps of both networks (before their final
    activation when ``preact_maps``); :meth:`check_maps` raises the clear errors of :func:`check_pairing` and
    :func:`check_conv_maps`. Put it before :class:`~hf_distill.methods.base.DistillationMethod` in the bases.
    """

    name: ClassVar[str]
    student_layer_names: list[str]
    teacher_layer_names: list[str]
    #: read the maps before their final activation (AB)
    preact_maps: ClassVar[bool] = False
    #: the sides read after their activation although ``preact_maps`` (auto pairing with a network that cannot
    #: give pre-activation maps)
    _postactivation: tuple[str, ...] = ()

    def select_layers(
        self,
        student_layers: str | int | Sequence[MapSelector],
        teacher_layers: str | int | Sequence[MapSelector] | None,
    ) -> None:
        """Keep the ``student_layers`` / ``teacher_layers`` hyperparameters as given (for ``hparams()``) and parse
        them (see :func:`parse_layer_pair`)."""
        self.student_layers = student_layers
        self.teacher_layers = teacher_layers
        self._student_sel, self._teacher_sel = parse_layer_pair(student_layers, teacher_layers, self.name)
        self._map_options = layer_options(self.name)

    def needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=self.map_needs("student", self._student_sel),
            teacher=self.map_needs("teacher", self._teacher_sel),
        )

    def map_needs(self, side: str, selectors: tuple[MapSelector, ...], **extra: bool) -> FeatureNeeds:
        """What the method reads from one side: the selected maps, transformer tokens laid out as maps, before
        their activation where the method wants it and the side was not switched to post-activation maps."""
        preact = extra.pop("preact", self.preact_maps) and side not in self._postactivation
        return FeatureNeeds(maps=selectors, preact=preact, token_maps=True, **extra)

    def fall_back_to_postactivation(self, side: str) -> None:
        """Read ``side``'s maps after their activation (see ``DistillationMethod.pair_layers``); a
        ``<side>_preact`` hyperparameter (OFD, ReviewKD) is switched off so that ``hparams()`` says what runs."""
        self._postactivation = (*self._postactivation, side)
        if hasattr(self, f"{side}_preact"):
            setattr(self, f"{side}_preact", False)

    def check_maps(self, student: FeatureSpec | None = None, teacher: FeatureSpec | None = None) -> None:
        """Check that the resolved layers pair one to one and, for the specs given, that the maps are convolutional.

        Raises:
            ValueError: with the layers and the flags that select them.
        """
        method = self.name.upper()
        check_pairing(self.student_layer_names, self.teacher_layer_names, method, self._map_options)
        for who, spec, layers in (
            ("student", student, self.student_layer_names),
            ("teacher", teacher, self.teacher_layer_names),
        ):
            if spec is not None:
                check_conv_maps(spec, layers, who, method, self._map_options)
