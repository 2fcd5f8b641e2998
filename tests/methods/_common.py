"""Shared test helpers for the method tests (test-only, not part of the library).

* zoo models, shapes and features: a :class:`FeatureSpec` / :class:`Features` from a real CIFAR-zoo model with one
  forward pass through the feature tap; random features of those shapes; numpy block pooling for the reference computations;
* real data: mini batches of ``assets/cifar10-subset`` (the module-scoped fixtures are in ``conftest.py``) and the
  teacher the tests distill from (the pretrained CIFAR-10 resnet56 when the asset is there);
* one way to build a method, as the trainer does (:func:`built`: the public ``build_distillation_model`` for two
  networks, or the same ``resolve_layers`` + ``build`` for shapes made by hand);
* a few SGD steps of a student under one method on a real batch (:func:`training_losses`, on the loop
  :func:`sgd_losses`);
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

from hf_distill.methods.base import DataInfo, DistillationMethod, Features, FeatureSpec, StepInfo
from tests.conftest import TEACHER_DIR
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
    method: DistillationMethod, s_spec: FeatureSpec, t_spec: FeatureSpec, term: str, step: StepInfo
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
    method: DistillationMethod,
    student: FeatureSpec | torch.nn.Module,
    teacher: FeatureSpec | torch.nn.Module,
    data: DataInfo | None = None,
    x: torch.Tensor | None = None,
    seed: int | None = None,
) -> DistillationMethod:
    """Resolve ``method``'s layers and build it, as the trainer does; returns the method.

    For two networks this is the public :func:`hf_distill.training.trainer.build_distillation_model` (its dry run on the
    images ``x``, default a zero image; both networks are left in eval mode). For two :class:`FeatureSpec` (shapes
    made by hand: token maps, missing BatchNorms) it is the two calls that function makes on each method,
    ``resolve_layers`` then ``build``.

    Args:
        data: the training-set facts (default: 64 samples of 10 classes).
        seed: reseed the global RNG right before the build (the method's random parts), if given.
    """
    data = data or DataInfo(num_samples=64, num_classes=10)
    if seed is not None:
        torch.manual_seed(seed)
    if isinstance(student, FeatureSpec):
        method.resolve_layers(student.names, teacher.names)
        method.build(student, teacher, data)
        return method
    from hf_distill.methods import DistillationObjective
    from hf_distill.training.trainer import build_distillation_model

    rows = None if x is None else [{"pixel_values": xi} for xi in x]
    build_distillation_model(
        student,
        teacher,
        DistillationObjective({method.name: method}, {method.name: 1.0}),
        rows,
        lambda r: {"pixel_values": torch.stack([e["pixel_values"] for e in r])},
        data,
    )
    student.eval(), teacher.eval()
    return method


def readers(
    method: DistillationMethod, student: torch.nn.Module, teacher: torch.nn.Module
) -> tuple[Any, Any, Any, Any]:
    """``(s_tap, t_tap, s_req, t_req)``: the taps and the feature requests the trainer reads a built method's
    features with."""
    from hf_distill.models.taps import feature_tap

    needs = method.needs()
    return (
        feature_tap(student),
        feature_tap(teacher),
        needs.student.with_maps(method.student_layer_names),
        needs.teacher.with_maps(method.teacher_layer_names),
    )


# -- real data and the teacher ------------------------------------------------------------------------------------------
def cifar_batch(dataset: Any, n: int = 32) -> dict[str, torch.Tensor]:
    """The first ``n`` rows of a raw split, prepared without augmentation and collated."""
    from hf_distill.data.datasets import collate, prepare_split

    split = prepare_split(dataset, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, train=False, max_samples=n)
    return collate([split.dataset[i] for i in range(n)])


def train_split(dataset: Any, n: int) -> Any:
    """The first ``n`` rows of a raw split, prepared for training (augmentation seeded by epoch and row)."""
    from hf_distill.data.datasets import prepare_split

    return prepare_split(dataset, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, train=True, max_samples=n)


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


def teacher_features(
    method: DistillationMethod, teacher: torch.nn.Module, x: torch.Tensor, batch_stats: bool = False
) -> Features:
    """What a built method reads from ``teacher`` on the images ``x``, without gradient.

    Args:
        batch_stats: run BatchNorm on the batch's statistics (a random-init network's running statistics are 0/1,
            which in eval mode lets activations grow with depth).
    """
    _, t_tap, _, t_req = readers(method, teacher, teacher)
    teacher.train(batch_stats)
    with torch.no_grad():
        f = t_tap(teacher, x, t_req)
    teacher.eval()
    return f


def training_losses(
    method: DistillationMethod,
    batch: dict[str, torch.Tensor],
    lr: float,
    steps: int = 6,
    teacher: torch.nn.Module | None = None,
    student: torch.nn.Module | None = None,
    scale: float | None = None,
    terms: Sequence[str] | None = None,
    init_stage: bool = False,
    teacher_batch_stats: bool | None = None,
    momentum: float = 0.9,
    final: bool = True,
) -> list[float]:
    """SGD steps of a student under one method alone, on one fixed real batch: the loss the method's tests watch
    decrease.

    The teacher's features are taken once (:func:`teacher_features`, on the batch converted to the teacher's
    normalization when it is not the student's); the student and the method's trainable parts
    are optimized (whatever ``requires_grad``), both in training mode.

    Args:
        teacher: default: a random-init zoo resnet20 (seed 1); :func:`cifar_teacher` for realistic activations.
        student: default: a random-init zoo resnet8 (seed 0, created after the teacher) for which ``method`` is
            then built with :func:`built` (dry run on the batch); a given student means the method is already built
            for it (a second phase after an init stage).
        scale: the loss is optimized times this (default: the method's ``default_weight``, as the objective does).
        terms: the terms to optimize (default: all the method returns).
        init_stage: optimize the method's ``init_stage_loss`` instead of its main-stage loss.
        teacher_batch_stats: the teacher's BatchNorm on batch statistics (see :func:`teacher_features`); default:
            for the default random-init teacher only.
        final: also return the loss after the last step.

    Returns:
        The (unscaled) loss before each step, plus its value after the last step if ``final``.
    """
    from hf_distill.models.normalization import TeacherInput, input_spec

    x, y = batch["pixel_values"], batch["labels"]
    if teacher_batch_stats is None:
        teacher_batch_stats = teacher is None
    teacher = zoo_model("resnet20", seed=1) if teacher is None else teacher
    teacher.eval().requires_grad_(False)
    if student is None:
        student = zoo_model("resnet8", seed=0)
        built(method, student, teacher, x=x[:2])
    x_t = x
    if input_spec(teacher) != input_spec(student):  # a pretrained teacher: the batch in its own normalization
        x_t = TeacherInput(CIFAR_SPEC, input_spec(teacher))(x)
    tf = teacher_features(method, teacher, x_t, teacher_batch_stats)
    s_tap, _, s_req, _ = readers(method, student, teacher)
    student.train(), method.train()
    step = StepInfo(labels=y)
    forward = method.init_stage_loss if init_stage else method

    def loss() -> torch.Tensor:
        out = forward(s_tap(student, x, s_req), tf, step)
        return sum(out[t] for t in terms) if terms else sum(out.values())

    params = [p for p in list(student.parameters()) + list(method.parameters()) if p.requires_grad]
    return sgd_losses(
        loss, params, steps, lr, momentum, method.default_weight if scale is None else scale, final
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

    cls: type[DistillationMethod]
    kwargs: dict[str, Any]
    s_spec: FeatureSpec
    t_spec: FeatureSpec
    state: dict[str, torch.Tensor]


def method_step(
    case: MethodCase, student: Features, teacher: Features, labels: torch.Tensor
) -> dict[str, Any]:
    """One loss evaluation + backward; returns the loss, its terms, the student-feature and parameter gradients."""
    m = built(case.cls(**case.kwargs), case.s_spec, case.t_spec)
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
    cls: type[DistillationMethod],
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
    ref = built(cls(**kwargs, gather=False), s_spec, t_spec)
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
