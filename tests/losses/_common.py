"""Shared test helpers for the method tests (test-only, not part of the library).

* zoo models, shapes and features: a :class:`FeatureSpec` / :class:`Features` from a real CIFAR-zoo model with one
  forward pass through the feature tap; a method resolved and built against them as the trainer's dry run does;
  random features of those shapes; numpy block pooling for the reference computations;
* real data: mini batches of ``assets/cifar10-subset`` (the module-scoped fixtures are in ``conftest.py``) and the
  teacher the tests distill from (the pretrained CIFAR-10 resnet56 when the asset is there);
* a few SGD steps of a method on a real batch (:func:`sgd_losses`; :func:`method_training_losses` against a
  random-init teacher, :func:`teacher_map_losses` for map methods and :func:`train_losses` for logit/embedding
  methods against :func:`cifar_teacher`);
* short :class:`DistillationTrainer` runs (:func:`tests.helpers.trainer_args`, :func:`distill_trainer`; :func:`init_stage_trainer`
  with :func:`check_init_stage_once_then_zero_term`, :func:`checkpointing_trainer`, :func:`state_copy`) for the
  init-stage, freezing and resume tests;
* a 2-process CPU launcher (``torch.multiprocessing`` spawn, gloo backend), and
  :func:`check_gather_matches_full_batch`, which shows for any method with a ``gather`` option that with
  ``gather=True`` each process (holding one slice of the batch) computes the full-batch loss, and that the gradients
  averaged over the processes (as DDP does) equal the full-batch gradient.
"""

from __future__ import annotations

import functools
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_distill.losses.base import DataInfo, DistillationLoss, Features, FeatureSpec, StepInfo
from tests.conftest import SUBSET, TEACHER_DIR
from tests.helpers import CIFAR_SPEC, trainer_args

# the cross-architecture pairs of the contract (teacher, student)
ZOO_PAIRS = (
    ("resnet32x4", "shufflenetv2"),
    ("vgg13", "mobilenetv2"),
    ("wrn_40_2", "wrn_16_2"),
    ("resnet56", "resnet20"),
)

#: whether the pretrained CIFAR-10 resnet56 teacher is there (realistic activations)
PRETRAINED_TEACHER = (TEACHER_DIR / "config.json").exists()


# -- zoo models, shapes and features ---------------------------------------------------------------------------------
def zoo_model(arch: str, seed: int = 0, num_labels: int = 10) -> torch.nn.Module:
    """A randomly initialized CIFAR-zoo model (deterministic for a seed)."""
    from hf_distill.models.modeling_cifar import create_cifar_model

    torch.manual_seed(seed)
    return create_cifar_model(arch, num_labels=num_labels)


def zoo_features(
    model: torch.nn.Module, x: torch.Tensor, maps: Sequence[str] | None = None, grad: bool = False
) -> Features:
    """Logits, embedding and maps (all by default; ``()`` for none) of ``model`` on ``x``, through the feature tap."""
    from hf_distill.features import FeatureNeeds
    from hf_distill.models.taps import feature_tap

    tap = feature_tap(model)
    req = FeatureNeeds(logits=True, embedding=True, maps=tuple(tap.names if maps is None else maps))
    with torch.set_grad_enabled(grad):
        return tap(model, x, req)


def features_spec(names: Iterable[str], f: Features) -> FeatureSpec:
    """The FeatureSpec (shapes without the batch dimension) of the features ``f`` of a network with layers ``names``."""
    return FeatureSpec(
        names=tuple(names),
        maps={k: tuple(v.shape[1:]) for k, v in f.maps.items()},
        logits=None if f.logits is None else tuple(f.logits.shape[1:]),
        embedding=None if f.embedding is None else tuple(f.embedding.shape[1:]),
    )


def model_spec(model: torch.nn.Module, x: torch.Tensor | None = None) -> FeatureSpec:
    """The FeatureSpec of ``model`` (every map, the embedding, the logits), from one eval forward on ``x`` (default:
    a random (2, 3, 32, 32) batch), as the trainer's dry run."""
    from hf_distill.models.taps import feature_tap

    f = zoo_features(model.eval(), torch.randn(2, 3, 32, 32) if x is None else x)
    return features_spec(feature_tap(model).names, f)


@functools.cache
def zoo_spec(arch: str) -> FeatureSpec:
    """The FeatureSpec of a zoo architecture (seed-0 model), cached."""
    return model_spec(zoo_model(arch))


def np_block_pool(x: np.ndarray, h: int, w: int | None = None) -> np.ndarray:
    """Average pooling of a (B, C, H, W) array to (h, w) (default: w = h) by equal blocks, for sizes that divide
    evenly (what adaptive average pooling does then)."""
    w = h if w is None else w
    b, c, hh, ww = x.shape
    return x.reshape(b, c, h, hh // h, w, ww // w).mean(axis=(3, 5))


def check_loss_on_random_maps(
    method: DistillationLoss, s_spec: FeatureSpec, t_spec: FeatureSpec, term: str, step: StepInfo
) -> None:
    """Assert that the method's ``term`` on random maps (batch 2) of its selected layers is finite and positive and
    that its gradient reaches every student map."""
    s = Features(
        maps={n: torch.randn(2, *s_spec.maps[n], requires_grad=True) for n in method.student_layer_names}
    )
    t = Features(maps={n: torch.randn(2, *t_spec.maps[n]) for n in method.teacher_layer_names})
    loss = method(s, t, step)[term]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(v.grad is not None for v in s.maps.values())


def random_features(spec: FeatureSpec, batch: int, seed: int = 0, relu: bool = True) -> Features:
    """Random features with the shapes of ``spec`` (non-negative maps by default, like post-ReLU activations)."""
    g = torch.Generator().manual_seed(seed)

    def r(shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.randn((batch, *shape), generator=g)
        return t.relu() if relu else t

    return Features(
        logits=torch.randn((batch, *spec.logits), generator=g) if spec.logits else None,
        embedding=r(spec.embedding) if spec.embedding else None,
        maps={k: r(v) for k, v in spec.maps.items()},
    )


def built(
    method: DistillationLoss, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo | None = None
) -> DistillationLoss:
    """Resolve a method's layers against the specs' names and build it, as the trainer does; returns the method."""
    method.resolve_layers(student.names, teacher.names)
    method.build(student, teacher, data or DataInfo(num_samples=64, num_classes=10))
    return method


def build_method(
    cls: type[DistillationLoss],
    kwargs: dict[str, Any],
    student: FeatureSpec,
    teacher: FeatureSpec,
    data: DataInfo | None = None,
) -> DistillationLoss:
    """Instantiate a method and build it with :func:`built`."""
    return built(cls(**kwargs), student, teacher, data)


def dry_run_build(
    method: DistillationLoss,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    x: torch.Tensor,
    seed: int | None = None,
) -> tuple[Any, Any, Any, Any]:
    """Build ``method`` for a student/teacher pair exactly as the trainer does, with the public
    :func:`hf_distill.trainer.build_distillation_model` (its dry run on the images ``x``); both networks are left
    in eval mode.

    Args:
        seed: reseed the global RNG right before the build (the method's random parts), if given.

    Returns:
        ``(s_tap, t_tap, s_req, t_req)``: the taps and the requests of what the method reads.
    """
    from hf_distill.losses import DistillationObjective
    from hf_distill.trainer import build_distillation_model

    objective = DistillationObjective({method.name: method}, {method.name: 1.0})
    rows = [{"pixel_values": xi} for xi in x]
    if seed is not None:
        torch.manual_seed(seed)
    b = build_distillation_model(
        student,
        teacher,
        objective,
        rows,
        lambda r: {"pixel_values": torch.stack([e["pixel_values"] for e in r])},
        DataInfo(num_samples=64, num_classes=10),
    )
    student.eval(), teacher.eval()
    return b.container.tap, b.teacher_tap, b.container.student_request, b.teacher_request


# -- real data and the teacher ------------------------------------------------------------------------------------------
def cifar_batch(dataset: Any, n: int = 32) -> dict[str, torch.Tensor]:
    """The first ``n`` rows of a raw split, prepared without augmentation and collated."""
    from hf_distill.data import collate, prepare_split

    split = prepare_split(dataset, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, train=False, max_samples=n)
    return collate([split.dataset[i] for i in range(n)])


def train_split(dataset: Any, n: int) -> Any:
    """The first ``n`` rows of a raw split, prepared for training (augmentation seeded by epoch and row)."""
    from hf_distill.data import prepare_split

    return prepare_split(dataset, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, train=True, max_samples=n)


@functools.lru_cache(maxsize=2)
def real_batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images of assets/cifar10-subset (CIFAR normalization, no augmentation)."""
    from hf_distill.data import load_image_dataset

    b = cifar_batch(load_image_dataset(str(SUBSET), "train"), n)
    return b["pixel_values"], b["labels"]


def cifar_teacher(fallback: str = "resnet20", seed: int | None = None) -> torch.nn.Module:
    """The pretrained CIFAR-10 resnet56 in eval mode when it is there (:data:`PRETRAINED_TEACHER`), else a
    random-init zoo ``fallback`` (seeded with ``seed`` if given)."""
    if PRETRAINED_TEACHER:
        from hf_distill.models.loading import load_model

        return load_model(str(TEACHER_DIR), role="teacher").eval()
    if seed is not None:
        return zoo_model(fallback, seed=seed).eval()
    from hf_distill.models.modeling_cifar import create_cifar_model

    return create_cifar_model(fallback, num_labels=10).eval()


# -- a few SGD steps -----------------------------------------------------------------------------------------------------
def sgd_losses(
    loss_fn: Callable[[], torch.Tensor],
    params: Iterable[torch.nn.Parameter],
    steps: int,
    lr: float,
    momentum: float = 0.9,
    scale: float = 1.0,
    final: bool = True,
) -> list[float]:
    """``steps`` SGD steps on ``scale * loss_fn()``.

    Returns:
        The (unscaled) loss before each step, plus its value after the last step if ``final``.
    """
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        losses.append(loss.item())
        opt.zero_grad()
        (scale * loss).backward()
        opt.step()
    if final:
        losses.append(loss_fn().item())
    return losses


def method_training_losses(
    cls: type[DistillationLoss],
    kwargs: dict[str, Any],
    batch: dict[str, torch.Tensor],
    teacher_arch: str = "resnet20",
    student_arch: str = "resnet8",
    steps: int = 6,
    lr: float = 0.01,
    scale: float | None = None,
) -> list[float]:
    """SGD steps (momentum 0.9) on one fixed real batch, optimizing ``scale * method loss`` (default: the method's
    ``default_weight``) over the student and the method's own parameters, with a frozen random-init zoo teacher.
    The teacher's features are taken with batch-statistics BN (a fresh model's running statistics are 0/1, which in
    eval mode lets activations grow with depth); they are computed once, without gradient.

    Returns:
        The method's (unscaled) loss before each step, plus its value after the last step.
    """
    from hf_distill.features import FeatureNeeds
    from hf_distill.models.taps import feature_tap

    teacher = zoo_model(teacher_arch, seed=1).eval().requires_grad_(False)
    student = zoo_model(student_arch, seed=0)
    x, y = batch["pixel_values"], batch["labels"]
    t_tap, s_tap = feature_tap(teacher), feature_tap(student)
    m = build_method(cls, kwargs, model_spec(student, x[:2]), model_spec(teacher, x[:2]))
    s_req = FeatureNeeds(logits=True, embedding=True, maps=tuple(m.student_layer_names))
    t_req = FeatureNeeds(logits=True, embedding=True, maps=tuple(m.teacher_layer_names))
    with torch.no_grad():
        tf = t_tap(teacher.train(), x, t_req)
    teacher.eval()
    student.train()
    m.train()
    return sgd_losses(
        lambda: sum(m(s_tap(student, x, s_req), tf, StepInfo(labels=y)).values()),
        list(student.parameters()) + list(m.parameters()),
        steps,
        lr,
        scale=cls.default_weight if scale is None else scale,
    )


def teacher_map_losses(
    method: DistillationLoss,
    x: torch.Tensor,
    term: str,
    lr: float,
    step: StepInfo,
    steps: int = 8,
    scale: float = 1.0,
    init_stage: bool = True,
) -> list[float]:
    """SGD steps (momentum 0.9) of a zoo resnet8 student (seed 0) under a map method alone, against the maps of
    :func:`cifar_teacher` on ``x`` (taken once, without gradient, before the final activation if the method asks
    so), over the student's and the method's parameters.

    Args:
        term: the loss term to optimize (times ``scale``).
        init_stage: optimize the method's ``init_stage_loss`` (else its main-stage loss).

    Returns:
        The term before each step (``steps`` values).
    """
    from hf_distill.features import FeatureNeeds
    from hf_distill.models.modeling_cifar import create_cifar_model
    from hf_distill.models.taps import feature_tap

    torch.manual_seed(0)
    student = create_cifar_model("resnet8", num_labels=10).train()
    teacher = cifar_teacher()
    s_tap, t_tap = feature_tap(student), feature_tap(teacher)
    built(method, zoo_spec("resnet8"), model_spec(teacher)).train()
    req = FeatureNeeds(
        logits=True, maps=tuple(method.student_layer_names), preact=method.needs().student.preact
    )
    with torch.no_grad():
        t_feats = t_tap(teacher, x, req)
    loss = method.init_stage_loss if init_stage else method
    return sgd_losses(
        lambda: loss(s_tap(student, x, req), t_feats, step)[term],
        list(student.parameters()) + list(method.parameters()),
        steps,
        lr,
        scale=scale,
        final=False,
    )


@functools.lru_cache(maxsize=2)
def teacher_on_batch(n: int = 16) -> tuple[Features, FeatureSpec]:
    """Logits and embedding of a frozen teacher on :func:`real_batch`: the pretrained CIFAR-10 resnet56 when the
    asset exists (fed the student-normalized batch converted to its statistics), otherwise a random-init zoo
    resnet14."""
    from hf_distill.models.taps import feature_tap

    x, _ = real_batch(n)
    teacher = cifar_teacher("resnet14", seed=1)
    if PRETRAINED_TEACHER:
        from hf_distill.models.normalization import InputSpec, TeacherInput, input_spec

        x = TeacherInput(InputSpec(CIFAR_SPEC.mean, CIFAR_SPEC.std, 32), input_spec(teacher))(x)
    f = zoo_features(teacher, x, maps=())
    return f.detach(), features_spec(feature_tap(teacher).names, f)


def train_losses(
    method: DistillationLoss,
    steps: int = 6,
    lr: float = 0.05,
    n: int = 16,
    student_arch: str = "resnet8",
    step_info: Callable[[torch.Tensor], StepInfo] | None = None,
) -> list[float]:
    """Build ``method`` for a small zoo student and the teacher of :func:`teacher_on_batch`, then run ``steps``
    SGD steps (momentum 0.9) on the method's loss alone over the student and the method's parameters (logit and
    embedding methods).

    Returns:
        The method's loss before each step and after the last one (``steps + 1`` values).
    """
    from hf_distill.models.taps import feature_tap

    x, y = real_batch(n)
    tf, t_spec = teacher_on_batch(n)
    student = zoo_model(student_arch, seed=0)
    student.eval()
    s_spec = features_spec(feature_tap(student).names, zoo_features(student, x[:2], maps=()))
    student.train()
    built(method, s_spec, t_spec, DataInfo(num_samples=n, num_classes=10))
    info = step_info(y) if step_info is not None else StepInfo(labels=y)
    return sgd_losses(
        lambda: sum(method(zoo_features(student, x, maps=(), grad=True), tf, info).values()),
        list(student.parameters()) + list(method.parameters()),
        steps,
        lr,
    )


# -- short trainer runs ---------------------------------------------------------------------------------------------
def distill_trainer(
    args: Any,
    objective: Any,
    train_dataset: Any,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    **kwargs: Any,
) -> Any:
    """A :class:`DistillationTrainer` on CIFAR-normalized inputs for both networks."""
    from hf_distill import DistillationTrainer

    return DistillationTrainer(
        model=student,
        teacher=teacher,
        objective=objective,
        args=args,
        train_dataset=train_dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
        **kwargs,
    )


def init_stage_trainer(tmp_path: Path, split: Any, method: str, method_kwargs: dict[str, Any]) -> Any:
    """resnet20 -> resnet8 (random init, seed 0) under one method with an init stage: the short run of
    :func:`trainer_args` on ``split``."""
    from hf_distill import DistillationObjective
    from hf_distill.models.modeling_cifar import create_cifar_model

    torch.manual_seed(0)
    student = create_cifar_model("resnet8", num_labels=10)
    teacher = create_cifar_model("resnet20", num_labels=10)
    obj = DistillationObjective.from_names(method, method_kwargs={method: method_kwargs})
    return distill_trainer(trainer_args(tmp_path / "out"), obj, split.dataset, student, teacher)


def check_init_stage_once_then_zero_term(trainer: Any, term: str) -> None:
    """After ``run_init_stage``: one stage record of 4 steps with a positive loss; then ``train()`` runs no stage
    again and logs the method's main-stage term as 0 (RepDistiller: CE only in the main stage)."""
    rec = [h for h in trainer.state.log_history if "init_stage_loss" in h]
    assert len(rec) == 1 and rec[0]["init_stage_steps"] == 4 and rec[0]["init_stage_loss"] > 0
    trainer.train()
    assert sum("init_stage_loss" in h for h in trainer.state.log_history) == 1
    main = [h for h in trainer.state.log_history if f"loss_{term}" in h]
    assert main and all(h[f"loss_{term}"] == 0.0 for h in main)


def checkpointing_trainer(
    tmp_path: Path,
    split: Any,
    method: str,
    method_kwargs: dict[str, Any],
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """resnet20 -> resnet8 (random init drawn from ``seed``) under one method, batches of 32 of ``split``, a
    checkpoint every step in ``tmp_path / "out"`` (the init-stage, freezing and resume tests)."""
    from hf_distill import DistillationObjective
    from hf_distill.models.modeling_cifar import create_cifar_model

    torch.manual_seed(seed)
    return distill_trainer(
        student=create_cifar_model("resnet8", num_labels=10),
        teacher=create_cifar_model("resnet20", num_labels=10),
        objective=DistillationObjective.from_names(method, method_kwargs={method: method_kwargs}),
        args=trainer_args(
            tmp_path / "out",
            **{
                "per_device_train_batch_size": 32,
                "save_strategy": "steps",
                "save_steps": 1,
                "seed": seed,
                "data_seed": 0,
                **overrides,
            },
        ),
        train_dataset=split.dataset,
        report_teacher_accuracy=False,
    )


def state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- several processes --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_world(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned CPU processes joined by a gloo group.

    ``fn`` must be importable (a module-level function) and its result ``torch.save``-able.

    Returns:
        The results, by rank.
    """
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_entry, args=(world_size, _free_port(), d, fn, args), nprocs=world_size, join=True)
        return [torch.load(os.path.join(d, f"{r}.pt"), weights_only=False) for r in range(world_size)]


def _slice(f: Features, lo: int, hi: int) -> Features:
    return Features(
        logits=None if f.logits is None else f.logits[lo:hi],
        embedding=None if f.embedding is None else f.embedding[lo:hi],
        maps={k: v[lo:hi] for k, v in f.maps.items()},
    )


def _leaf(f: Features) -> Features:
    """A copy whose tensors are leaves that require grad (to read the gradient each feature receives)."""

    def g(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().clone().requires_grad_(True)

    return Features(logits=g(f.logits), embedding=g(f.embedding), maps={k: g(v) for k, v in f.maps.items()})


@dataclass
class MethodCase:
    """A method, its hyperparameters, the shapes it is built for and the state it starts from."""

    cls: type[DistillationLoss]
    kwargs: dict[str, Any]
    s_spec: FeatureSpec
    t_spec: FeatureSpec
    state: dict[str, torch.Tensor]


def method_step(
    case: MethodCase, student: Features, teacher: Features, labels: torch.Tensor
) -> dict[str, Any]:
    """One loss evaluation + backward; returns the loss, its terms, the student-feature and parameter gradients."""
    m = build_method(case.cls, case.kwargs, case.s_spec, case.t_spec)
    m.load_state_dict(case.state)
    s = _leaf(student)
    out = m(s, teacher.detach(), StepInfo(labels=labels))
    loss = sum(out.values())
    loss.backward()
    feats = {"embedding": s.embedding, "logits": s.logits, **{f"map.{k}": v for k, v in s.maps.items()}}
    return {
        "loss": loss.detach(),
        "terms": {k: v.detach() for k, v in out.items()},
        "feature_grads": {k: v.grad for k, v in feats.items() if v is not None and v.grad is not None},
        "param_grads": {n: p.grad for n, p in m.named_parameters() if p.grad is not None},
    }


def _shard_worker(
    rank: int, world: int, case: MethodCase, student: Features, teacher: Features, labels: torch.Tensor
) -> dict[str, Any]:
    n = labels.shape[0] // world
    lo, hi = rank * n, (rank + 1) * n
    return method_step(case, _slice(student, lo, hi), _slice(teacher, lo, hi), labels[lo:hi])


def check_gather_matches_full_batch(
    cls: type[DistillationLoss],
    kwargs: dict[str, Any],
    s_spec: FeatureSpec,
    t_spec: FeatureSpec,
    batch: int = 8,
    world_size: int = 2,
    seed: int = 0,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Assert that ``gather=True`` over ``world_size`` processes reproduces one process with the whole batch.

    Every process gets ``batch // world_size`` consecutive rows of the same random features. Checked: each
    process's loss (and terms) equals the full-batch value; the feature gradients of the processes, concatenated,
    equal the full-batch feature gradient; the parameter gradients summed over processes (what DDP all-reduces)
    equal the full-batch parameter gradient.
    """
    torch.manual_seed(seed)
    ref = build_method(cls, {**kwargs, "gather": False}, s_spec, t_spec)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    student = random_features(s_spec, batch, seed=seed + 1)
    teacher = random_features(t_spec, batch, seed=seed + 2)
    labels = torch.arange(batch) % 10
    full = method_step(
        MethodCase(cls, {**kwargs, "gather": False}, s_spec, t_spec, state), student, teacher, labels
    )
    case = MethodCase(cls, {**kwargs, "gather": True}, s_spec, t_spec, state)
    parts = run_world(_shard_worker, case, student, teacher, labels, world_size=world_size)
    for r, p in enumerate(parts):
        torch.testing.assert_close(p["loss"], full["loss"], rtol=rtol, atol=atol, msg=f"loss on rank {r}")
        for k, v in full["terms"].items():
            torch.testing.assert_close(p["terms"][k], v, rtol=rtol, atol=atol, msg=f"term {k} on rank {r}")
    assert full["feature_grads"], "the full-batch loss gave no gradient to the student features"
    # gather_with_grad scales each process's share by the world size, so that DDP's average is the full gradient
    for k, g in full["feature_grads"].items():
        got = torch.cat([p["feature_grads"][k] for p in parts]) / world_size
        torch.testing.assert_close(got, g, rtol=rtol, atol=atol, msg=f"gradient of student {k}")
    assert set().union(*(p["param_grads"] for p in parts)) == set(full["param_grads"])
    for k, g in full["param_grads"].items():
        got = sum(p["param_grads"][k] for p in parts if k in p["param_grads"]) / world_size  # DDP's average
        torch.testing.assert_close(got, g, rtol=rtol, atol=atol, msg=f"gradient of parameter {k}")


def check_resume_restores_method(
    tmp_path: Path, split: Any, method: str, method_kwargs: dict[str, Any]
) -> None:
    """A 2-step run of :func:`checkpointing_trainer`, and a second trainer of another seed (other initial trainable
    parts, another random teacher) resumed from the first one's last checkpoint: every tensor of the method's state
    (its trainable parts and buffers) then equals the first run's."""
    full = checkpointing_trainer(tmp_path / "a", split, method, method_kwargs)
    full.train()
    ref = state_copy(full.model.objective.methods[method])
    assert ref, f"{method} has no state to checkpoint"
    resumed = checkpointing_trainer(tmp_path / "a", split, method, method_kwargs, seed=7)
    fresh = state_copy(resumed.model.objective.methods[method])
    assert any(not torch.equal(fresh[k], ref[k]) for k in ref if ref[k].is_floating_point())
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-2"))
    got = state_copy(resumed.model.objective.methods[method])
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-6, rtol=0), k
