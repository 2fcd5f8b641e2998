"""The contract between the trainer and a distillation method.

A method is a small ``nn.Module`` (subclass of :class:`DistillationMethod`) that

* declares what it reads from the student and the teacher (:meth:`DistillationMethod.needs`), so the trainer
  extracts only that and runs the teacher once per batch under ``torch.no_grad()``;
* builds its trainable parts (regressors, embedding heads) and buffers (memory banks) in :meth:`setup`, from the
  shapes seen on a dry run, so it works for any teacher/student pair;
* returns a dict of named loss terms from :meth:`forward` (each is logged on its own);
* may ask for an initialization stage run before the main training (:class:`InitStage`).

The trainer puts every method inside the module that Accelerate/DDP wraps, next to the student, so parameters are
optimized, synchronized and checkpointed with it, and buffers travel in every checkpoint.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from ..features import AUTO, FeatureNeeds, Features, FeatureSpec, MapSelector  # noqa: F401  (re-exported: the method API)
from .pairing import LayerPair, describe_module, method_role, resolve_auto

_GROUP_SELECTORS = ("stages", "last", "all", AUTO)


@dataclass(frozen=True)
class MethodNeeds:
    """Everything a method needs for one batch.

    Args:
        student: what it reads from the student.
        teacher: what it reads from the teacher (nothing at all means the teacher is not run for it).
        index: the dataset row index of every sample (memory banks).
    """

    student: FeatureNeeds = field(default_factory=FeatureNeeds)
    teacher: FeatureNeeds = field(default_factory=FeatureNeeds)
    index: bool = False

    def __or__(self, other: MethodNeeds) -> MethodNeeds:
        return MethodNeeds(
            self.student | other.student, self.teacher | other.teacher, self.index or other.index
        )


@dataclass(frozen=True)
class DataInfo:
    """Facts about the training set that stateful methods need.

    Args:
        num_samples: rows in the training set (size of a per-sample memory bank).
        num_classes: number of classes.
        labels: the label of every training row, in row-index order (for class-aware negative sampling).
    """

    num_samples: int
    num_classes: int
    labels: Tensor | None = None


@dataclass
class StepInfo:
    """Per-batch context handed to every method.

    Args:
        labels: (B,) ground-truth classes.
        index: (B,) dataset row indices, when a method asked for them.
        epoch: training progress in (fractional) epochs, as the trainer counts it.
        global_step: optimizer steps done so far.
        max_steps: optimizer steps of the whole run.
        num_epochs: epochs of the whole run.
        pixel_values: the batch's images, as the student saw them (methods that run networks of their own: DML's
            peers).
    """

    labels: Tensor
    index: Tensor | None = None
    epoch: float = 0.0
    global_step: int = 0
    max_steps: int = 0
    num_epochs: float = 0.0
    pixel_values: Tensor | None = None


@dataclass(frozen=True)
class InitStage:
    """A short stage run before the main training (RepDistiller does this for AB, FT and FSP).

    During the stage the trainer optimizes only :meth:`DistillationMethod.init_stage_loss`, over the method's own
    trainable parameters and, if ``train_student``, the student's parameters that receive gradients from it.

    Args:
        epochs: length of the stage.
        learning_rate: SGD learning rate of the stage (None: the main run's learning rate).
        train_student: whether the student is updated too (AB, FSP) or only the method's parts (FT).
    """

    epochs: float = 30.0
    learning_rate: float | None = None
    train_student: bool = False


def resolve_selectors(
    selectors: Sequence[MapSelector], names: Sequence[str], who: str = "model"
) -> list[str]:
    """Turn map selectors into concrete layer names.

    Args:
        selectors: see ``MapSelector``.
        names: the layer names the network offers, shallow to deep (first = stem).
        who: "student"/"teacher", for the error message.

    Returns:
        The layer names, in selector order, without duplicates.

    Raises:
        ValueError: a selector names no layer; the message lists the valid names.
    """
    names = list(names)
    out: list[str] = []
    for sel in selectors:
        if sel == AUTO:
            raise ValueError(
                f"Selector 'auto' pairs the {who}'s layers from the shapes of a dry run of both networks: build the "
                "method with hf_distill.training.build_distillation_model (the trainer does), which calls "
                "pair_layers first."
            )
        if sel == "stages":
            picked = names[1:]
        elif sel == "last":
            picked = names[-1:]
        elif sel == "all":
            picked = names
        elif isinstance(sel, int):
            if not -len(names) <= sel < len(names):
                raise ValueError(
                    f"Feature layer index {sel} is out of range for the {who}, which has {len(names)} feature "
                    f"layers: {', '.join(names)}. Use an index in [{-len(names)}, {len(names) - 1}] or a name."
                )
            picked = [names[sel]]
        elif sel in names:
            picked = [sel]
        else:
            raise ValueError(
                f"Feature layer {sel!r} does not exist in the {who}. Valid layer names: {', '.join(names)} "
                f"(or the groups {', '.join(_GROUP_SELECTORS)}, or an integer position)."
            )
        if not picked:
            raise ValueError(
                f"Selector {sel!r} selects no feature layer of the {who} (layers: {', '.join(names)})."
            )
        out.extend(p for p in picked if p not in out)
    return out


class DistillationMethod(nn.Module):
    """Base class of every distillation method.

    Subclasses set the class attributes, implement :meth:`needs` and :meth:`forward`, and optionally
    :meth:`setup` (lazy trainable parts / buffers) and the init-stage hooks. Hyperparameters are the keyword
    arguments of ``__init__`` (they become command-line flags ``--<method>-<name>`` in ``recipes/distill.py``).

    Class attributes:
        name: registry key.
        summary: one line saying what is matched (README table, ``--help``).
        paper: short citation shown in the README table and model cards.
        default_weight: the weight of the method's loss when it is used alone (RepDistiller's ``-b``, or ``-a``
            for KD).
        default_ce_weight: the cross-entropy weight when the method is used alone (RepDistiller's ``-r``).
        combo_weight: the method's weight inside a combination (None: ``default_weight``); KD uses 1.0, as in
            RepDistiller's "CRD+KD" runs.
        min_batch_size: the smallest batch the loss means something on; methods that compare the samples of a
            batch with each other (RKD, SP, PKT, CC, ...) set it (with ``gather=True`` the global batch counts). The
            trainer refuses a configured batch below it at setup; a batch below it during training (the last, short
            batch of an epoch whose size is not a multiple of the batch size) is skipped by the objective: the
            method is not called, its terms are left out of that batch's loss (weight 0, so they neither teach nor
            poison it with a NaN), and the skip is counted and logged once
            (:attr:`~hf_distill.methods.objective.DistillationObjective.short_batch_skips`). A wrapper is skipped
            when a method it wraps is. Every registered method with a minimum is tested on a batch of one row
            (``tests/methods/test_short_batch.py``).
        renamed_hyperparameters: deprecated hyperparameter name -> current name; the old names are still accepted
            (flags, configs, ``method_args``) with a ``FutureWarning``.
        legacy_defaults: defaults the old options had (under their current names), filled in when an old name is
            used, so that an old setting keeps its meaning.
        pair_requirement: what a teacher/student pair needs for this method, as a phrase its build error quotes
            verbatim (FSP: equal channel counts); empty: the method builds on any pair whose maps it can read. The
            contract test (``tests/methods/test_contract.py``) accepts a refusal only when it quotes this.

    Feature layers are selected by the hyperparameters ``student_layers`` and ``teacher_layers`` (``teacher_layers``
    empty or None: the student's selectors); the resolved layer names are ``student_layer_names`` and
    ``teacher_layer_names``. The selector ``"auto"`` pairs the layers of any two backbones by depth and spatial size
    (:meth:`pair_layers`, :mod:`hf_distill.methods.pairing`); a method that compares maps one to one records the
    pairs it compares, with their connectors, in ``pairing`` (:class:`~hf_distill.methods.pairing.LayerPair`).

    Class attributes for pairing:
        resize_note: how the method reconciles the spatial sizes of a pair, in words (the pairing log and card).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0
    default_ce_weight: ClassVar[float] = 1.0
    combo_weight: ClassVar[float | None] = None
    min_batch_size: ClassVar[int] = 1
    renamed_hyperparameters: ClassVar[dict[str, str]] = {}
    legacy_defaults: ClassVar[dict[str, Any]] = {}
    pair_requirement: ClassVar[str] = ""
    resize_note: ClassVar[str] = "the larger map average-pooled to the smaller size"

    #: set by subclasses that want an initialization stage (an instance attribute so it can be configured).
    init_stage: InitStage | None = None

    #: attributes the base class owns; a hyperparameter of the same name would be overwritten by the trainer.
    _RESERVED: ClassVar[frozenset[str]] = frozenset(
        {"student_layer_names", "teacher_layer_names", "init_stage", "name", "training", "pairing"}
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        clash = sorted(set(inspect.signature(cls.__init__).parameters) & cls._RESERVED)
        if clash:
            raise TypeError(
                f"{cls.__name__}: hyperparameter name(s) {', '.join(clash)} are reserved by DistillationMethod; "
                "rename them (the feature-layer selectors are student_layers / teacher_layers)."
            )

    def __init__(self) -> None:
        super().__init__()
        self.student_layer_names: list[str] = []
        self.teacher_layer_names: list[str] = []
        #: the (teacher map, student map) pairs the method compares, with their connectors (set by :meth:`build`)
        self.pairing: list[LayerPair] = []
        #: the layer names auto pairing chose (student, teacher), set by :meth:`pair_layers`
        self._auto_layers: tuple[list[str], list[str]] | None = None
        #: what auto pairing changed beyond the layers (a side read after its activation), for the log
        self.pairing_notes: list[str] = []
        self._is_set_up = False

    # -- declaration -------------------------------------------------------------------------------------------
    def needs(self) -> MethodNeeds:
        """What this method reads. Map selectors are resolved by :meth:`resolve_layers`."""
        raise NotImplementedError

    def layer_needs(self) -> MethodNeeds:
        """The needs whose map selectors this method resolves itself (a wrapper: its own, not its base's)."""
        return self.needs()

    @property
    def uses_auto_pairing(self) -> bool:
        """Whether a selector of this method is ``"auto"`` (:meth:`pair_layers` must run before the layers resolve)."""
        n = self.layer_needs()
        return AUTO in n.student.maps or AUTO in n.teacher.maps

    def pair_layers(self, student: FeatureSpec, teacher: FeatureSpec) -> None:
        """Choose the layers of the ``"auto"`` selectors from the shapes of every offered layer of both networks
        (a dry run with every layer, tokens laid out as maps); a no-op for a method without ``"auto"``.

        A side whose network gives no pre-activation maps is then read after its activation where the method would
        read it before (:meth:`fall_back_to_postactivation`), noted in ``pairing_notes``.

        Raises:
            ValueError: a network without stages, or ``"auto"`` mixed with other selectors on one side.
        """
        if not self.uses_auto_pairing:
            return
        n = self.layer_needs()
        role = method_role(self.hyperparameters().get("student_layers"))
        self._auto_layers = resolve_auto(
            n.student.maps, n.teacher.maps, student, teacher, role, self.name, resolve_selectors
        )
        for side, spec in (("student", student), ("teacher", teacher)):
            wants = getattr(n, side)
            if wants.preact and wants.maps and not spec.preact_maps:
                self.fall_back_to_postactivation(side)
                self.pairing_notes.append(
                    f"{side} maps read after their activation ({spec.model or 'the ' + side} gives no pre-activation maps)"
                )

    def fall_back_to_postactivation(self, side: str) -> None:
        """Read ``side``'s maps after their activation (auto pairing with a network that gives no pre-activation
        maps). Methods that read pre-activation maps override this; by default it is refused."""
        raise ValueError(
            f"{self.name} reads pre-activation maps, which the {side} cannot give; auto pairing has no fallback for it."
        )

    def resolve_layers(self, student_names: Sequence[str], teacher_names: Sequence[str]) -> None:
        """Resolve this method's map selectors into layer names (``self.student_layer_names``/``teacher_layer_names``).

        Called by the trainer before the dry run; raises a clear error for a layer that does not exist. ``"auto"``
        takes the layers :meth:`pair_layers` chose.
        """
        n = self.needs()
        if self._auto_layers is not None:
            self.student_layer_names, self.teacher_layer_names = (list(x) for x in self._auto_layers)
            return
        self.student_layer_names = resolve_selectors(n.student.maps, student_names, "student")
        self.teacher_layer_names = resolve_selectors(n.teacher.maps, teacher_names, "teacher")

    # -- lazy construction -------------------------------------------------------------------------------------
    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        """Create trainable parts and buffers from the shapes seen on the dry run. Default: nothing."""

    def build(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        """Run :meth:`setup` once (the trainer calls this), then record :attr:`pairing`."""
        if not self._is_set_up:
            self.setup(student, teacher, data)
            self._is_set_up = True
            self.pairing = self.layer_pairs(student, teacher)

    def layer_pairs(
        self,
        student: FeatureSpec,
        teacher: FeatureSpec,
        s_names: Sequence[str] | None = None,
        t_names: Sequence[str] | None = None,
    ) -> list[LayerPair]:
        """The (teacher map, student map) pairs of a method that compares its selected maps one to one (default:
        ``student_layer_names`` with ``teacher_layer_names``), with their connectors (:meth:`pair_connector`); empty
        for any other method."""
        s_names = self.student_layer_names if s_names is None else s_names
        t_names = self.teacher_layer_names if t_names is None else t_names
        if not s_names or len(s_names) != len(t_names):
            return []
        auto = self._auto_layers is not None
        out = []
        for i, (sn, tn) in enumerate(zip(s_names, t_names)):
            s_shape, t_shape = tuple(student.maps.get(sn, ())), tuple(teacher.maps.get(tn, ()))
            connector = self.pair_connector(i)
            if len(s_shape) == 3 and len(t_shape) == 3 and s_shape[1:] != t_shape[1:]:
                connector += f"; {s_shape[1]}x{s_shape[2]} vs {t_shape[1]}x{t_shape[2]}: {self.resize_note}"
            out.append(LayerPair(tn, t_shape, sn, s_shape, connector, auto))
        return out

    def pair_connector(self, index: int) -> str:
        """What stands between the maps of pair ``index`` (channels), in words. Default: the method's
        ``connectors[index]`` where it has such a list, else its trainable submodules by name, else ``"none"``."""
        connectors = getattr(self, "connectors", None)
        if isinstance(connectors, nn.ModuleList) and index < len(connectors):
            return describe_module(connectors[index])
        parts = [n for n, m in self.named_children() if next(m.parameters(), None) is not None]
        return f"{self.name}'s own parts: {', '.join(parts)}" if parts else "none"

    # -- the loss ------------------------------------------------------------------------------------------------
    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        """Return named loss terms (already combined with the method's own internal weights).

        The trainer multiplies their sum by the method's weight in the objective.
        """
        raise NotImplementedError

    # -- optional initialization stage ---------------------------------------------------------------------------
    def init_stage_loss(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        """Loss terms of the initialization stage (only called when ``init_stage`` is set)."""
        raise NotImplementedError(f"{type(self).__name__} declares no initialization stage")

    def on_init_stage_end(self) -> None:
        """Called once the initialization stage is over (e.g. to freeze a pretrained paraphraser)."""

    # -- helpers -------------------------------------------------------------------------------------------------
    @classmethod
    def default_weights(cls, kwargs: dict[str, Any] | None = None) -> tuple[float, float, float | None]:
        """(``default_weight``, ``default_ce_weight``, ``combo_weight``) for these hyperparameters.

        The class attributes by default; a wrapper whose weights are those of a wrapped method (SKD and its
        ``base``) overrides this.
        """
        return cls.default_weight, cls.default_ce_weight, cls.combo_weight

    @classmethod
    def upgrade_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` with deprecated hyperparameter names replaced by the current ones.

        Warns (``FutureWarning``) once per deprecated name used, naming its replacement.

        Raises:
            ValueError: an option is given under both its old and its new name.
        """
        out = dict(kwargs)
        old_names = [k for k in out if k in cls.renamed_hyperparameters]
        for old in old_names:
            new = cls.renamed_hyperparameters[old]
            if new in out:
                raise ValueError(
                    f"{cls.name}: {old!r} is the deprecated name of {new!r}; give only --{cls.name}-{new}."
                )
            warnings.warn(
                f"{cls.name}: hyperparameter {old!r} (--{cls.name}-{old}) is deprecated; use {new!r} "
                f"(--{cls.name}-{new}).",
                FutureWarning,
                stacklevel=3,
            )
            out[new] = out.pop(old)
        if old_names:
            for k, v in cls.legacy_defaults.items():
                out.setdefault(k, v)
        return out

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """The keyword arguments of ``__init__`` with their defaults (the method's configurable knobs)."""
        sig = inspect.signature(cls.__init__)
        return {
            k: p.default
            for k, p in sig.parameters.items()
            if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def hparams(self) -> dict[str, Any]:
        """Current values of the hyperparameters (for logs and model cards)."""
        return {k: getattr(self, k, v) for k, v in self.hyperparameters().items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
