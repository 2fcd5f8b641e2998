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

from ..features import FeatureNeeds, Features, FeatureSpec, MapSelector  # noqa: F401  (re-exported: the method API)

_GROUP_SELECTORS = ("stages", "last", "all")


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

    Feature layers are selected by the hyperparameters ``student_layers`` and ``teacher_layers`` (``teacher_layers``
    empty or None: the student's selectors); the resolved layer names are ``student_layer_names`` and
    ``teacher_layer_names``.
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

    #: set by subclasses that want an initialization stage (an instance attribute so it can be configured).
    init_stage: InitStage | None = None

    #: attributes the base class owns; a hyperparameter of the same name would be overwritten by the trainer.
    _RESERVED: ClassVar[frozenset[str]] = frozenset(
        {"student_layer_names", "teacher_layer_names", "init_stage", "name", "training"}
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
        self._is_set_up = False

    # -- declaration -------------------------------------------------------------------------------------------
    def needs(self) -> MethodNeeds:
        """What this method reads. Map selectors are resolved by :meth:`resolve_layers`."""
        raise NotImplementedError

    def resolve_layers(self, student_names: Sequence[str], teacher_names: Sequence[str]) -> None:
        """Resolve this method's map selectors into layer names (``self.student_layer_names``/``teacher_layer_names``).

        Called by the trainer before the dry run; raises a clear error for a layer that does not exist.
        """
        n = self.needs()
        self.student_layer_names = resolve_selectors(n.student.maps, student_names, "student")
        self.teacher_layer_names = resolve_selectors(n.teacher.maps, teacher_names, "teacher")

    # -- lazy construction -------------------------------------------------------------------------------------
    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        """Create trainable parts and buffers from the shapes seen on the dry run. Default: nothing."""

    def build(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        """Run :meth:`setup` once (the trainer calls this)."""
        if not self._is_set_up:
            self.setup(student, teacher, data)
            self._is_set_up = True

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
