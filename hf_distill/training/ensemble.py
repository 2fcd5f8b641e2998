"""Teacher ensembles: distill several frozen teachers into one student.

The teachers may be any mix of CIFAR-zoo, timm and transformers models, with their own input normalization, input
size and feature widths; each gets its own input conversion from the student's batch (:class:`TeacherInput`), its
own feature tap and request, and its own logit order (their label sets must agree: :func:`align_ensemble_label_spaces`).
Each teacher runs once per batch, frozen, in eval mode and under ``torch.no_grad()``; none is ever saved with the
student.

How a method sees the ensemble (:class:`EnsembleMethod`), with teacher weights ``w_i`` normalized to sum to 1:

* a **logit method** (it reads only the teacher's logits: ``kd``, ``dkd``, ``cskd``, ...), ``mode="distribution"``
  (default): one instance of the method, given the logits ``z = T log sum_i w_i softmax(t_i / T)`` with ``T`` the
  method's ``temperature`` (1 when it has none). Softened at ``T``, ``z`` is exactly the weighted average of the
  teachers' softened distributions, so KD and DKD at temperature ``T`` distill the averaged distribution at their own
  temperature. Methods that z-score the teacher's logits first (``logit_standardize``) are refused in this mode.
* a logit method, ``mode="loss"``: one instance per teacher, the loss is ``sum_i w_i L_i`` (the average of the
  per-teacher losses).
* a **feature or embedding method** (it reads maps or the embedding): one instance per teacher, with its own
  trainable parts (regressors, heads, memory banks) built for that teacher's shapes, stored as
  ``objective.methods.<method>.members.<i>``; the loss is ``sum_i n w_i L_i`` (with equal weights: the sum of the
  per-teacher losses). Each instance is initialized from the same random state, the one a single-teacher run starts
  from.

Per-teacher terms are logged as ``<term>_teacher<i>`` (already multiplied by the teacher's share).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import collate
from ..data.labels import align_ensemble_label_spaces, num_labels_of
from ..features import FeatureNeeds, Features, FeatureSpec
from ..methods import DataInfo, DistillationMethod, DistillationObjective, StepInfo
from ..models.normalization import InputSpec, TeacherInput, input_spec
from ..models.taps import feature_tap
from .distillation_model import (
    BuiltDistillation,
    DistillationModel,
    _data_info,
    log_pairing,
    network_spec,
    pair_auto_layers,
    probe_input,
)
from .teacher_cache import input_digests

#: how a logit method combines the teachers: their averaged distribution, or the average of per-teacher losses
ENSEMBLE_MODES = ("distribution", "loss")


def ensemble_weights(weights: Sequence[float] | None, num_teachers: int) -> tuple[float, ...]:
    """The teachers' weights, normalized to sum to 1 (default: equal).

    Raises:
        ValueError: not one positive, finite weight per teacher.
    """
    if weights is None or len(weights) == 0:
        return tuple(1.0 / num_teachers for _ in range(num_teachers))
    w = [float(x) for x in weights]
    if len(w) != num_teachers or not all(math.isfinite(x) and x > 0 for x in w):
        raise ValueError(
            f"Teacher ensemble weights {w} do not fit {num_teachers} teachers: give one positive weight per "
            "teacher, in the teachers' order (--ensemble_weights 0.6,0.4)."
        )
    return tuple(x / sum(w) for x in w)


def mixture_logits(logits: Sequence[Tensor], weights: Sequence[float], temperature: float = 1.0) -> Tensor:
    """``T log sum_i w_i softmax(t_i / T)``: logits whose softmax at temperature ``T`` is the weighted average of the
    teachers' softmaxes at ``T`` (``weights`` sum to 1)."""
    logp = torch.stack([F.log_softmax(t.float() / temperature, dim=1) for t in logits])
    logw = torch.tensor(weights, dtype=logp.dtype, device=logp.device).log().view(-1, 1, 1)
    return temperature * torch.logsumexp(logp + logw, dim=0)


def is_logit_method(method: DistillationMethod) -> bool:
    """Whether a method reads only the teacher's logits (no maps, no embedding)."""
    t = method.needs().teacher
    return t.logits and not t.embedding and not t.maps


def method_temperature(method: DistillationMethod) -> float:
    """The fixed softmax temperature a logit method softens the teacher with (1 when it has none)."""
    t = getattr(method, "temperature", None)
    return float(t) if isinstance(t, (int, float)) and t > 0 else 1.0


@dataclass
class EnsembleFeatures(Features):
    """The teachers' outputs for one batch: one :class:`Features` per teacher (``members``) and their weights.

    ``logits`` is the weighted average of the teachers' class distributions (as log-probabilities): what the
    ensemble predicts, used to evaluate it.
    """

    members: list[Features] = field(default_factory=list)
    weights: tuple[float, ...] = ()

    def float(self) -> EnsembleFeatures:
        return EnsembleFeatures(
            logits=None if self.logits is None else self.logits.float(),
            members=[m.float() for m in self.members],
            weights=self.weights,
        )

    def detach(self) -> EnsembleFeatures:
        return EnsembleFeatures(
            logits=None if self.logits is None else self.logits.detach(),
            members=[m.detach() for m in self.members],
            weights=self.weights,
        )


def ensemble_features(members: list[Features], weights: Sequence[float]) -> EnsembleFeatures:
    have_logits = all(m.logits is not None for m in members)
    logits = mixture_logits([m.logits for m in members], weights) if have_logits else None
    return EnsembleFeatures(logits=logits, members=members, weights=tuple(weights))


class EnsembleMethod(DistillationMethod):
    """One distillation method of the objective, applied to a teacher ensemble (see the module docstring).

    Args:
        method: the method, unbuilt; it becomes the first member, and the copies for the other teachers are made
            from it before anything is built.
        num_teachers: teachers in the ensemble.
        weights: the teachers' weights (summing to 1).
        mix: give one instance the teachers' averaged distribution (a logit method in ``"distribution"`` mode)
            instead of one instance per teacher.
    """

    def __init__(
        self, method: DistillationMethod, num_teachers: int, weights: Sequence[float], mix: bool
    ) -> None:
        super().__init__()
        if mix and getattr(method, "logit_standardize", False):
            raise ValueError(
                f"{method.name} z-scores the teacher's logits (logit_standardize), which the teachers' averaged "
                "distribution does not have: use --ensemble_mode loss (the average of per-teacher losses)."
            )
        self.mix = bool(mix)
        copies = 1 if mix else num_teachers
        self.members = nn.ModuleList([method] + [copy.deepcopy(method) for _ in range(copies - 1)])
        self.teacher_weights = tuple(weights)
        self.name = method.name
        self.init_stage = method.init_stage
        # the teacher's share of a per-teacher term: an average for logit methods, a sum for the others
        n = 1.0 if is_logit_method(method) else float(num_teachers)
        self.shares = tuple(n * w for w in weights)

    def member(self, teacher: int) -> DistillationMethod:
        """The instance that reads teacher ``teacher`` (the single mixing instance when ``mix``)."""
        return self.members[0 if self.mix else teacher]

    def needs(self):
        return self.members[0].needs()

    def hparams(self) -> dict[str, Any]:
        return self.members[0].hparams()

    def extra_repr(self) -> str:
        return f"mix={self.mix}, teacher_weights={self.teacher_weights}"

    def resolve_for_teachers(
        self, student_names: Sequence[str], teacher_names: Sequence[Sequence[str]]
    ) -> None:
        """Resolve each instance's layer selectors against its own teacher's layer names."""
        for i in range(len(teacher_names)):
            if not self.mix or i == 0:
                self.member(i).resolve_layers(student_names, teacher_names[i])
        self.student_layer_names = list(self.members[0].student_layer_names)
        self.teacher_layer_names = list(self.members[0].teacher_layer_names)

    def build_for_teachers(
        self, student: FeatureSpec, teachers: Sequence[FeatureSpec], data: DataInfo
    ) -> None:
        """Build each instance for its teacher's shapes, every one from the random state the first starts from
        (so the first is built exactly as a single-teacher run builds it); leave the state the first one left."""
        start = torch.get_rng_state()
        after = start
        for i, m in enumerate(self.members):
            torch.set_rng_state(start)
            m.build(student, teachers[i], data)
            if i == 0:
                after = torch.get_rng_state()
        torch.set_rng_state(after)
        self._is_set_up = True

    def _per_teacher(self, losses: Callable, student: Features, teacher: EnsembleFeatures, step: StepInfo):
        terms: dict[str, Tensor] = {}
        for i, (m, f) in enumerate(zip(self.members, teacher.members)):
            for k, v in losses(m)(student, f, step).items():
                terms[f"{k}_teacher{i + 1}"] = self.shares[i] * v
        return terms

    def forward(self, student: Features, teacher: EnsembleFeatures, step: StepInfo) -> dict[str, Tensor]:
        if not self.mix:
            return self._per_teacher(lambda m: m, student, teacher, step)
        m = self.members[0]
        z = mixture_logits([f.logits for f in teacher.members], self.teacher_weights, method_temperature(m))
        return m(student, Features(logits=z), step)

    def init_stage_loss(
        self, student: Features, teacher: EnsembleFeatures, step: StepInfo
    ) -> dict[str, Tensor]:
        return self._per_teacher(lambda m: m.init_stage_loss, student, teacher, step)

    def on_init_stage_end(self) -> None:
        for m in self.members:
            m.on_init_stage_end()


def model_name(model: nn.Module) -> str:
    """A teacher's name for logs and cards: its folder or Hub id, else its class."""
    core = getattr(model, "module", model)
    return getattr(getattr(core, "config", None), "_name_or_path", None) or type(core).__name__


class TeacherEnsemble(nn.Module):
    """Several frozen teachers distilled together (pass a list as ``DistillationTrainer(teacher=[...])``).

    Args:
        teachers: two or more teachers (zoo, timm or transformers; any input normalization, size and widths).
        weights: one positive weight per teacher (normalized to sum to 1; default: equal).
        mode: ``"distribution"`` (logit methods distill the averaged distribution) or ``"loss"`` (they average
            per-teacher losses); see the module docstring.
    """

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        mode: str = "distribution",
    ) -> None:
        super().__init__()
        if len(teachers) < 2:
            raise ValueError("A teacher ensemble needs at least two teachers; pass a single teacher as is.")
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"Unknown ensemble mode {mode!r}: use one of {', '.join(ENSEMBLE_MODES)}.")
        self.teachers = nn.ModuleList(teachers)
        self.weights = ensemble_weights(weights, len(teachers))
        self.mode = mode
        self.names = [model_name(t) for t in teachers]
        self.adapters = nn.ModuleList()
        self.taps: list = []
        self.requests: list[FeatureNeeds] = []
        self.label_orders: list[Tensor | None] = []
        self.member_metrics: list[dict[str, float]] = []  # each teacher's eval metrics (set by the trainer)

    def __len__(self) -> int:
        return len(self.teachers)

    def summary(self) -> list[dict[str, Any]]:
        """Each teacher's name, weight, and accuracy and top-5 once evaluated (``member_metrics``)."""
        metrics = self.member_metrics + [{}] * (len(self) - len(self.member_metrics))
        return [
            {"name": n, "weight": w, "accuracy": m.get("accuracy"), "top5_accuracy": m.get("top5_accuracy")}
            for n, w, m in zip(self.names, self.weights, metrics)
        ]

    def prepare(self, accelerator) -> None:
        """Freeze the teachers and place them (device, mixed-precision autocast; never DDP), with their input
        conversions and logit orders, on the run's device."""
        for i, t in enumerate(self.teachers):
            t.requires_grad_(False)
            t.eval()
            self.teachers[i] = accelerator.prepare_model(t, evaluation_mode=True)
        self.adapters.to(accelerator.device)
        self.label_orders = [None if o is None else o.to(accelerator.device) for o in self.label_orders]

    @torch.no_grad()
    def features(
        self,
        pixel_values: Tensor,
        autocast: Callable,
        request: FeatureNeeds | None = None,
        caches: Sequence | None = None,
        index: Tensor | None = None,
    ) -> EnsembleFeatures:
        """Run every teacher once on the student's batch (each in its own input format); logits in the student's
        class order. With ``caches`` (one :class:`~hf_distill.training.teacher_cache.TeacherCache` per teacher) and the
        training rows' ``index``, a teacher whose outputs are stored is read instead of run."""
        members = []
        # every member's cache checks the same batch: hash its pixels once
        digests = input_digests(pixel_values) if caches else None
        for i, (t, tap, adapter, req, order) in enumerate(
            zip(self.teachers, self.taps, self.adapters, self.requests, self.label_orders)
        ):

            def compute(t=t, tap=tap, adapter=adapter, req=req, order=order) -> Features:
                t.eval()
                with autocast():
                    f = tap(t, adapter(pixel_values), request or req)
                if order is not None and f.logits is not None:
                    f.logits = f.logits[:, order]
                return f

            members.append(
                compute() if caches is None else caches[i].features(pixel_values, index, compute, digests)
            )
        return ensemble_features(members, self.weights)


def as_teacher(
    teacher: nn.Module | Sequence[nn.Module] | None,
    weights: Sequence[float] | None = None,
    mode: str = "distribution",
) -> nn.Module | None:
    """What ``DistillationTrainer(teacher=...)`` distills: a list of two or more teachers becomes their
    :class:`TeacherEnsemble`, a list of one is that teacher (the single-teacher path, unchanged)."""
    if not isinstance(teacher, (list, tuple)):
        if weights is not None and teacher is not None:
            raise ValueError("ensemble_weights were given for a single teacher: pass a list of teachers.")
        return teacher
    if len(teacher) == 1:
        return teacher[0]
    return TeacherEnsemble(teacher, weights, mode)


def build_ensemble_distillation(
    student: nn.Module,
    ensemble: TeacherEnsemble,
    objective: DistillationObjective,
    train_dataset=None,
    collator: Callable = collate,
    data_info: DataInfo | None = None,
    student_input: InputSpec | None = None,
) -> BuiltDistillation:
    """:func:`~hf_distill.training.distillation_model.build_distillation_model` for a teacher ensemble: every method becomes
    an :class:`EnsembleMethod`, resolved and built against each teacher's own layers and shapes; the ensemble gets
    its taps, requests, input conversions and logit orders.

    Raises:
        ValueError: the teachers' label sets disagree, a layer does not exist in a teacher, bad weights.
    """
    needs = objective.needs()
    n = len(ensemble)
    s_tap = feature_tap(student)
    taps = [feature_tap(t) for t in ensemble.teachers]
    methods = {
        k: EnsembleMethod(m, n, ensemble.weights, ensemble.mode == "distribution" and is_logit_method(m))
        for k, m in objective.methods.items()
    }
    s_in = student_input or input_spec(student)
    ensemble.adapters = nn.ModuleList(TeacherInput(s_in, input_spec(t)) for t in ensemble.teachers)
    x = probe_input(student, train_dataset, collator)
    auto = pair_auto_layers(
        [list(m.members) for m in methods.values()],
        student,
        s_tap,
        x,
        list(zip(ensemble.teachers, taps, ensemble.adapters)),
    )
    needs = objective.needs()  # after pairing: a side may now be read after its activation
    for m in methods.values():
        m.resolve_for_teachers(s_tap.names, [tap.names for tap in taps])
    # each teacher's instance may pair other student layers (auto pairing): the student gives all of them
    s_req = needs.student.with_maps(
        list(
            dict.fromkeys(x for m in methods.values() for inst in m.members for x in inst.student_layer_names)
        )
    )
    s_req = replace(s_req, token_maps=s_req.token_maps or auto)
    requests = [
        replace(
            needs.teacher.with_maps(
                list(dict.fromkeys(x for m in methods.values() for x in m.member(i).teacher_layer_names))
            ),
            token_maps=needs.teacher.token_maps or auto,
        )
        for i in range(n)
    ]
    s_tap.check(s_req, "student")
    if needs.teacher.anything:
        for i, (tap, req) in enumerate(zip(taps, requests)):
            tap.check(req, f"teacher {i + 1}")
    ensemble.label_orders = align_ensemble_label_spaces(student, list(ensemble.teachers), train_dataset)
    info = data_info or _data_info(train_dataset, num_labels_of(student))
    if needs.index and train_dataset is not None and info.num_samples == 0:
        raise ValueError("The training set is empty.")
    ensemble.taps, ensemble.requests = taps, requests
    s_spec = network_spec(student, s_tap, s_req, x, needs.student.batchnorm, role="student")
    t_specs = [FeatureSpec(names=())] * n
    if needs.teacher.anything:
        with torch.no_grad():
            t_specs = [
                network_spec(t, tap, req, adapter(x), needs.teacher.batchnorm, role="teacher")
                for t, tap, req, adapter in zip(ensemble.teachers, taps, requests, ensemble.adapters)
            ]
    for m in methods.values():
        m.build_for_teachers(s_spec, t_specs, info)
    pairing = log_pairing(
        (f"{k} (teacher {i + 1})", inst) for k, m in methods.items() for i, inst in enumerate(m.members)
    )
    wrapped = DistillationObjective(methods, objective.weights, objective.ce_weight)
    union = requests[0]
    for r in requests[1:]:
        union = union | r
    return BuiltDistillation(DistillationModel(student, wrapped, s_req), None, union, info, None, pairing)


def evaluate_members(trainer) -> list[dict[str, float]]:
    """Each teacher's metrics (accuracy, top-5) on the trainer's eval set, in the ensemble's order."""
    return [trainer.evaluate_teacher(member=i) for i in range(len(trainer.ensemble))]


def method_class(method: DistillationMethod) -> type:
    """The class that documents a method of the objective (the wrapped one for an :class:`EnsembleMethod`)."""
    return type(method.members[0]) if isinstance(method, EnsembleMethod) else type(method)


__all__ = [
    "ENSEMBLE_MODES",
    "as_teacher",
    "EnsembleFeatures",
    "EnsembleMethod",
    "TeacherEnsemble",
    "build_ensemble_distillation",
    "ensemble_weights",
    "evaluate_members",
    "is_logit_method",
    "method_class",
    "mixture_logits",
]
