"""The module the Trainer trains: the student plus the distillation objective, and how it is built.

:class:`DistillationModel` holds the student and every trainable part of the distillation methods, so the Trainer
optimizes, Accelerate wraps (DDP, autocast) and checkpoints them together; the teacher stays outside it.
:func:`build_distillation_model` is the construction step (layer resolution, label-space check, dry run, building
the methods' parts), public so that benchmarks and tests build exactly what the trainer builds.
Checkpoints hold this module's whole state in upstream's format (:mod:`hf_distill.training.checkpoints`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import Tensor, nn

from ..data.datasets import collate, find_label_column
from ..data.labels import align_label_spaces, num_labels_of
from ..features import LOGITS_ONLY, FeatureNeeds, Features, FeatureSpec
from ..methods import DataInfo, DistillationMethod, DistillationObjective, StepInfo
from ..methods.pairing import LayerPair
from ..models.batchnorm import batchnorm_affine, batchnorm_before_maps
from ..models.normalization import TeacherInput, input_spec
from ..models.taps import FeatureTap, feature_tap

logger = logging.getLogger(__name__)


class DistillationModel(nn.Module):
    """The student plus the distillation objective (and its trainable parts): the module the Trainer trains.

    Args:
        student: the network being trained.
        objective: cross-entropy + weighted distillation methods.
        student_request: what to extract from the student on a distillation step.
    """

    # Losses are per-batch means: the Trainer must scale them for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(
        self, student: nn.Module, objective: DistillationObjective, student_request: FeatureNeeds
    ) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.student_request = student_request
        self.tap: FeatureTap = feature_tap(student)
        self.register_buffer("init_stage_done", torch.tensor(False))
        self.phase = "main"
        # methods that read no teacher (mutual learning) still run on every training step
        self.teacher_free = bool(objective.methods) and not objective.needs_teacher

    @property
    def config(self):
        return getattr(self.student, "config", None)

    def forward(
        self,
        pixel_values: Tensor,
        labels: Tensor | None = None,
        index: Tensor | None = None,
        teacher_features: Features | None = None,
        step: StepInfo | None = None,
    ) -> dict[str, Any]:
        """Run the student and, on a distillation step, every method.

        Without ``teacher_features`` (evaluation, or ``--method none``) this is plain classification: student
        logits and, with labels, ``ce_weight * CE``.

        Returns:
            dict with ``loss`` (when labels are given), ``logits`` and ``loss_terms`` (name -> unweighted term).
        """
        if self.phase == "init":
            return self._init_stage_forward(pixel_values, labels, index, teacher_features, step)
        if teacher_features is None and self.training and self.teacher_free:
            teacher_features = Features()
        distill = teacher_features is not None and labels is not None
        request = self.student_request if distill else LOGITS_ONLY
        s = self.tap(self.student, pixel_values, request)
        out: dict[str, Any] = {"logits": s.logits}
        if labels is None:
            return out
        step = replace(
            step if step is not None else StepInfo(labels=labels, index=index), pixel_values=pixel_values
        )
        # Loss math runs in float32 even under bf16/fp16 autocast: softmax with temperature, cosines and NCE
        # normalizations are unstable in half precision.
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            total, terms = self.objective(s.float(), teacher_features.float() if distill else None, step)
        # Evaluation reports the student's plain cross-entropy, whatever the training weights are.
        out["loss"] = total if (distill or self.training) else terms["ce"]
        out["loss_terms"] = terms
        return out

    def _init_stage_forward(self, pixel_values, labels, index, teacher_features, step) -> dict[str, Any]:
        train_student = any(
            self.objective.methods[m].init_stage.train_student for m in self.objective.init_stage_methods()
        )
        if not train_student:  # the student only provides features: keep its BN statistics untouched
            self.student.eval()
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_student):
            s = self.tap(self.student, pixel_values, self.student_request)
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            total, terms = self.objective.init_stage_forward(s.float(), teacher_features.float(), step)
        return {"loss": total, "logits": s.logits, "loss_terms": terms}


@dataclass
class BuiltDistillation:
    """What :func:`build_distillation_model` returns.

    Attributes:
        container: the student and the built objective in one module (what the Trainer optimizes).
        teacher_tap: extracts the teacher's features (``None`` without a teacher).
        teacher_request: what to extract from the teacher on each step.
        data_info: the training set's facts the methods were built with.
        teacher_label_order: ``teacher_logits[:, order]`` are in the student's class order (None: already are).
        pairing: method name -> the (teacher map, student map) pairs it compares, with their connectors, for the
            methods that compare maps one to one (:class:`~hf_distill.methods.pairing.LayerPair`; the log and the
            model card show them).
    """

    container: DistillationModel
    teacher_tap: FeatureTap | None
    teacher_request: FeatureNeeds
    data_info: DataInfo
    teacher_label_order: Tensor | None = None
    pairing: dict[str, list[LayerPair]] = field(default_factory=dict)


def build_distillation_model(
    student: nn.Module,
    teacher: nn.Module | None,
    objective: DistillationObjective,
    train_dataset=None,
    collator: Callable = collate,
    data_info: DataInfo | None = None,
    teacher_adapter: TeacherInput | None = None,
) -> BuiltDistillation:
    """Resolve the methods' feature layers and build their trainable parts and buffers for a student/teacher pair.

    The label spaces are checked (:func:`~hf_distill.data.labels.align_label_spaces`); the feature layers named by every
    method are resolved against both networks (a name that matches no layer is a clear error listing the valid
    ones); the methods' lazily created parts (regressors, heads, memory banks) are then
    built from the shapes seen in a dry run on two real training samples (or a zero image without a dataset). This is
    the construction step of :class:`DistillationTrainer`, public so that benchmarks and tests build exactly what the
    trainer builds.

    Args:
        student: the student network.
        teacher: the frozen teacher, or ``None`` for an objective that needs none.
        objective: the distillation objective (unbuilt).
        train_dataset: the prepared training set (rows with ``pixel_values``, ``labels``, ``index``).
        collator: turns a list of rows into a batch.
        data_info: the training set's size, class count and labels (default: read from ``train_dataset``).
        teacher_adapter: converts the student's input to the teacher's (default: from both models' own input
            specs); pass the one training will use so that the probed teacher shapes are the trained ones.

    Returns:
        A :class:`BuiltDistillation` with the container, the teacher's tap and request, and the data facts.
    """
    s_tap = feature_tap(student)
    t_tap = feature_tap(teacher) if teacher is not None else None
    if teacher is not None and teacher_adapter is None:
        teacher_adapter = TeacherInput(input_spec(student), input_spec(teacher))
    x = probe_input(student, train_dataset, collator)
    auto = pair_auto_layers(
        objective.methods.values(),
        student,
        s_tap,
        x,
        [(teacher, t_tap, teacher_adapter)] if teacher is not None else [],
    )
    needs = objective.needs()  # after pairing: a side may now be read after its activation
    objective.resolve_layers(s_tap.names, t_tap.names if t_tap is not None else [])
    s_req = replace(
        needs.student.with_maps(objective.student_layer_names()), token_maps=needs.student.token_maps or auto
    )
    t_req = replace(
        needs.teacher.with_maps(objective.teacher_layer_names()), token_maps=needs.teacher.token_maps or auto
    )
    s_tap.check(s_req, "student")
    if t_tap is not None and needs.teacher.anything:
        t_tap.check(t_req, "teacher")
    label_order = align_label_spaces(student, teacher, train_dataset)
    info = data_info or _data_info(train_dataset, num_labels_of(student))
    if needs.index and train_dataset is not None and info.num_samples == 0:
        raise ValueError("The training set is empty.")
    s_spec = network_spec(student, s_tap, s_req, x, needs.student.batchnorm, role="student")
    t_spec = FeatureSpec(names=())
    if teacher is not None and needs.teacher.anything:
        t_spec = network_spec(
            teacher, t_tap, t_req, teacher_adapter(x), needs.teacher.batchnorm, role="teacher"
        )
    objective.build(s_spec, t_spec, info)
    pairing = log_pairing(objective.methods.items())
    return BuiltDistillation(
        DistillationModel(student, objective, s_req), t_tap, t_req, info, label_order, pairing
    )


def pair_auto_layers(
    methods: Iterable[DistillationMethod],
    student: nn.Module,
    s_tap: FeatureTap,
    x: Tensor,
    teachers: list[tuple[nn.Module, FeatureTap, TeacherInput]],
) -> bool:
    """Let every method with an ``"auto"`` selector choose its layers (``DistillationMethod.pair_layers``) from a dry run
    of every layer the networks offer, transformer tokens laid out as maps.

    Args:
        methods: the methods; with several teachers (an ensemble) each method is a list, one instance per teacher.
        student: the student; ``s_tap`` its tap and ``x`` the dry run's images.
        teachers: (teacher, tap, input conversion) of each teacher, in the order of each method's instances.

    Returns:
        Whether any method uses auto pairing (its requests then ask for token maps).
    """
    methods = [m if isinstance(m, (list, tuple)) else [m] for m in methods]
    if not any(inst.uses_auto_pairing for group in methods for inst in group):
        return False
    s_all = network_spec(student, s_tap, FeatureNeeds(maps=tuple(s_tap.names), token_maps=True), x)
    t_all = [
        network_spec(t, tap, FeatureNeeds(maps=tuple(tap.names), token_maps=True), adapter(x))
        for t, tap, adapter in teachers
    ] or [FeatureSpec(names=())]
    for group in methods:
        for inst, t_spec in zip(group, t_all if len(group) > 1 else t_all[:1]):
            inst.pair_layers(s_all, t_spec)
    return True


def log_pairing(methods: Iterable[tuple[str, DistillationMethod]]) -> dict[str, list[LayerPair]]:
    """Log every method's layer pairs once, one line each, and return them (method name -> pairs)."""
    out: dict[str, list[LayerPair]] = {}
    for name, method in methods:
        if not method.pairing:
            continue
        out[name] = list(method.pairing)
        how = "auto pairing" if method.pairing[0].auto else "named layers"
        for note in method.pairing_notes:
            logger.info("%s (%s): %s", name, how, note)
        for pair in method.pairing:
            logger.info("%s (%s): %s", name, how, pair.line())
    return out


def probe_input(model: nn.Module, train_dataset=None, collator: Callable = collate) -> Tensor:
    """The batch the dry run sees: two real training samples, or a zero image at the model's input size."""
    if train_dataset is not None and len(train_dataset) > 0:
        return collator([train_dataset[i] for i in range(min(2, len(train_dataset)))])["pixel_values"]
    size = input_spec(model).image_size
    return torch.zeros(2, 3, size, size)


class InputShapeError(ValueError):
    """A network cannot run on the input the run feeds it (e.g. a ViT on a size that is not a multiple of its
    patch): found by the dry run at setup, before anything is written."""


@torch.no_grad()
def network_spec(
    net: nn.Module | None,
    tap: FeatureTap | None,
    req: FeatureNeeds,
    xin: Tensor,
    batchnorm: bool = False,
    role: str = "network",
) -> FeatureSpec:
    """Run one network once (eval mode, no grad) on ``xin`` and record the shapes of what ``req`` asks for.

    Raises:
        InputShapeError: the network fails on ``xin``'s shape (its own error, in one line, with the fix).
    """
    if net is None:
        return FeatureSpec(names=())
    p = next(net.parameters(), None)
    was = net.training
    net.eval()
    bns = {}
    try:
        xin = xin.to(p.device if p is not None else "cpu")
        if batchnorm:
            f, bns = batchnorm_before_maps(net, lambda: tap(net, xin, req))
        else:
            f = tap(net, xin, req)
    except (AssertionError, RuntimeError, ValueError) as e:
        if isinstance(e, ValueError) and _raised_here(e):
            raise  # our own refusals (a layer name, a tap) say what they mean
        size = "x".join(str(d) for d in xin.shape[-2:])
        fix = (
            "pass an --image_size it accepts (or --train_transform to change the pipeline; from Python, transform "
            "the images to such a size, e.g. with model_pipeline(student))"
            if role == "student"
            else "check its input size (--teacher and its saved preprocessing)"
        )
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputShapeError(
            f"The {role} ({type(net).__name__}) cannot run on {size} px inputs: {reason} Fix: {fix}."
        ) from e
    finally:
        net.train(was)
    return FeatureSpec(
        names=tuple(tap.names),
        maps={k: tuple(v.shape[1:]) for k, v in f.maps.items()},
        logits=None if f.logits is None else tuple(f.logits.shape[1:]),
        embedding=None if f.embedding is None else tuple(f.embedding.shape[1:]),
        batchnorm={k: batchnorm_affine(bn) for k, bn in bns.items()},
        model=tap.model_name,
        input_size=(int(xin.shape[-2]), int(xin.shape[-1])),
        preact_maps=tap.supports_preact,
    )


def _raised_here(e: BaseException) -> bool:
    """Whether the innermost frame of ``e``'s traceback is hf_distill's own code (transformers' ViT refuses a
    size with a ValueError; so do our taps for a bad layer name, which is not a size problem)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = Path(__file__).resolve().parents[1]
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(package)


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _data_info(train_dataset, num_classes: int | None) -> DataInfo:
    if train_dataset is None:
        return DataInfo(num_samples=0, num_classes=num_classes or 0)
    labels = getattr(train_dataset, "labels", None)
    inner = train_dataset
    while not isinstance(inner, datasets.Dataset) and getattr(inner, "dataset", None) is not None:
        inner = inner.dataset  # a wrapper (hf_distill.data.datasets.IndexedRows): the user's dataset inside
    if not isinstance(labels, torch.Tensor) and isinstance(inner, datasets.Dataset):
        raw = inner.with_format(None)
        col = find_label_column(raw.column_names)
        labels = torch.as_tensor(raw[col], dtype=torch.long) if col is not None else None
    if not isinstance(labels, torch.Tensor):
        labels = None
    check_label_range(labels, num_classes)
    return DataInfo(num_samples=len(train_dataset), num_classes=num_classes or 0, labels=labels)


def check_label_range(labels: Tensor | None, num_classes: int | None) -> None:
    """The training labels are class ids the student predicts, ``0 .. num_classes - 1``: checked at setup, where
    cross-entropy would otherwise stop the first batch that holds one with "Target N is out of bounds".

    Raises:
        ValueError: a label outside that range (one line with the fix).
    """
    if labels is None or not labels.numel() or not num_classes:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"The training labels lie in {low}..{high} but the student predicts {num_classes} classes (ids 0.."
            f"{num_classes - 1}): create the student with num_labels={max(high + 1, num_classes)} (and the teacher "
            "alike), or map the labels to class ids from 0."
        )


__all__ = [
    "BuiltDistillation",
    "DistillationModel",
    "InputShapeError",
    "build_distillation_model",
    "check_label_range",
    "log_pairing",
    "network_spec",
    "pair_auto_layers",
    "num_labels_of",
    "probe_input",
]
