"""Methods that modify another registered method, their *base*: SKD rewrites the teacher target its base sees,
IE-KD adds its own terms next to its base's.

:class:`WrappedMethod` holds, once, what such a modifier shares: the base is built from the registry by name with its
hyperparameters (``--<method>-base`` / ``--<method>-base_kwargs``), recorded with its defaults filled in (logs and
model cards reproduce the run), and its needs, layer resolution, trainable parts, buffers and checkpointed state
travel with the wrapper (the base is a submodule). A new modifier subclasses it, calls :meth:`WrappedMethod.wrap` in
``__init__``, declares its own reads in :meth:`WrappedMethod.own_needs` and calls :meth:`WrappedMethod.base_terms`
in ``forward``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

from .base import (
    DataInfo,
    DistillationMethod,
    Features,
    FeatureSpec,
    MethodNeeds,
    StepInfo,
    resolve_selectors,
)
from .registry import canonical, get_method, instantiate

__all__ = ["WrappedMethod", "parse_base_kwargs"]

_NO_BASE = ("", "none")


def parse_base_kwargs(value: dict[str, Any] | str | None, method: str) -> dict[str, Any]:
    """The base's hyperparameters from a dict or a JSON object string (as given on the command line).

    Raises:
        ValueError: not a dict nor a JSON object.
    """
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{method} base_kwargs must be a JSON object, e.g. '{{\"temperature\": 2}}': {e}"
            ) from e
    if not isinstance(value, dict):
        raise ValueError(
            f"{method} base_kwargs must be a dict of the base method's hyperparameters, got {value!r}"
        )
    return dict(value)


class WrappedMethod(DistillationMethod):
    """Base class of a method that wraps another registered method (``self.base_method``).

    Class attributes:
        weights_from_base: the method's default weights are those of its base (SKD) rather than its own (IE-KD).
        default_base: the base when none is given (None: the base is optional).

    After :meth:`wrap`: ``base`` (registry name or None), ``base_kwargs`` (every hyperparameter of the base) and
    ``base_method`` (the base module or None).
    """

    weights_from_base: ClassVar[bool] = False
    default_base: ClassVar[str | None] = None

    def wrap(self, base: str | None, base_kwargs: dict[str, Any] | str | None) -> DistillationMethod | None:
        """Build the base from the registry and keep it as ``self.base_method``.

        Raises:
            ValueError: the method names itself, or base_kwargs without a base.
        """
        name = None if base is None or canonical(base) in _NO_BASE else canonical(base)
        if name is None:
            if base_kwargs:
                raise ValueError(
                    f"{self.name} base_kwargs were given without a base method (--{self.name}-base)."
                )
            self.base, self.base_kwargs, self.base_method = None, None, None
            return None
        if name == self.name:
            raise ValueError(
                f"{self.name} cannot wrap itself: pass another method as --{self.name}-base (e.g. kd)."
            )
        method = instantiate(name, parse_base_kwargs(base_kwargs, self.name))
        self.base = name
        self.base_kwargs = method.hparams()
        self.base_method = method
        return method

    @classmethod
    def default_weights(cls, kwargs: dict[str, Any] | None = None) -> tuple[float, float, float | None]:
        """The base's default weights when ``weights_from_base`` (for the ``base`` in ``kwargs``), else our own."""
        if not cls.weights_from_base:
            return super().default_weights(kwargs)
        b = get_method(str((kwargs or {}).get("base") or cls.default_base))
        return b.default_weight, b.default_ce_weight, b.combo_weight

    # -- forwarded to the base -----------------------------------------------------------------------------------
    def own_needs(self) -> MethodNeeds:
        """What the wrapper itself reads (the base's needs are added by :meth:`needs`)."""
        raise NotImplementedError

    def needs(self) -> MethodNeeds:
        own = self.own_needs()
        return own if self.base_method is None else own | self.base_method.needs()

    def layer_needs(self) -> MethodNeeds:
        return self.own_needs()

    @property
    def uses_auto_pairing(self) -> bool:
        base = self.base_method is not None and self.base_method.uses_auto_pairing
        return base or super().uses_auto_pairing

    def pair_layers(self, student: FeatureSpec, teacher: FeatureSpec) -> None:
        """Pair the wrapper's own ``"auto"`` selectors, and the base's (as if used alone)."""
        super().pair_layers(student, teacher)
        if self.base_method is not None:
            self.base_method.pair_layers(student, teacher)

    #: the wrapper's own resolved layers (without the base's), set by :meth:`resolve_layers`
    own_student_layer_names: list[str] = []
    own_teacher_layer_names: list[str] = []

    def resolve_layers(self, student_names: Sequence[str], teacher_names: Sequence[str]) -> None:
        """Resolve the wrapper's own selectors (``own_student_layer_names`` / ``own_teacher_layer_names``) and the
        base's (as if used alone); ``student_layer_names`` / ``teacher_layer_names`` hold their union."""
        own = self.own_needs()
        if self._auto_layers is not None:
            s, t = (list(x) for x in self._auto_layers)
        else:
            s = resolve_selectors(own.student.maps, student_names, "student")
            t = resolve_selectors(own.teacher.maps, teacher_names, "teacher")
        self.own_student_layer_names, self.own_teacher_layer_names = s, t
        if self.base_method is not None:
            self.base_method.resolve_layers(student_names, teacher_names)
            s = s + self.base_method.student_layer_names
            t = t + self.base_method.teacher_layer_names
        self.student_layer_names, self.teacher_layer_names = list(dict.fromkeys(s)), list(dict.fromkeys(t))

    def build(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        """Build the wrapper's parts (:meth:`setup`), then the base's."""
        if not self._is_set_up:
            self.setup(student, teacher, data)
            if self.base_method is not None:
                self.base_method.build(student, teacher, data)
            self._is_set_up = True
            own = self.layer_pairs(
                student, teacher, self.own_student_layer_names, self.own_teacher_layer_names
            )
            self.pairing = own + ([] if self.base_method is None else self.base_method.pairing)

    def base_terms(
        self, student: Features, teacher: Features, step: StepInfo, prefix: str, weight: float | None = None
    ) -> dict[str, Tensor]:
        """The base's loss terms, renamed ``<prefix><term>`` and multiplied by ``weight`` when given."""
        parts = self.base_method(student, teacher, step)
        return {f"{prefix}{k}": v if weight is None else weight * v for k, v in parts.items()}
