"""Shared test helpers for the method tests (test-only, not part of the library).

* zoo shapes and features: build a :class:`FeatureSpec` / :class:`Features` from a real CIFAR-zoo model with one
  forward pass through the feature tap, and a real mini batch from ``assets/cifar10-subset``;
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
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_distill.losses.base import DataInfo, DistillationLoss, Features, FeatureSpec, StepInfo

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.247, 0.243, 0.261)

# the cross-architecture pairs of the contract (teacher, student)
ZOO_PAIRS = (
    ("resnet32x4", "shufflenetv2"),
    ("vgg13", "mobilenetv2"),
    ("wrn_40_2", "wrn_16_2"),
    ("resnet56", "resnet20"),
)


# -- zoo models and real data -----------------------------------------------------------------------------------------
def zoo_model(arch: str, seed: int = 0, num_labels: int = 10) -> torch.nn.Module:
    """A randomly initialized CIFAR-zoo model (deterministic for a seed)."""
    from hf_distill.models.modeling_cifar import create_cifar_model

    torch.manual_seed(seed)
    return create_cifar_model(arch, num_labels=num_labels)


def zoo_features(
    model: torch.nn.Module, x: torch.Tensor, maps: Sequence[str] | None = None, grad: bool = False
) -> Features:
    """Logits, embedding and maps (all by default) of ``model`` on ``x``, through the feature tap."""
    from hf_distill.models.taps import TapRequest, feature_tap

    tap = feature_tap(model)
    req = TapRequest(logits=True, embedding=True, maps=tuple(tap.names if maps is None else maps))
    with torch.set_grad_enabled(grad):
        return tap(model, x, req)


@functools.cache
def zoo_spec(arch: str) -> FeatureSpec:
    """The FeatureSpec of a zoo architecture (every map, the embedding, the logits), from one eval forward (cached)."""
    from hf_distill.models.taps import feature_tap

    model = zoo_model(arch).eval()
    f = zoo_features(model, torch.randn(2, 3, 32, 32))
    return FeatureSpec(
        names=tuple(feature_tap(model).names),
        maps={k: tuple(v.shape[1:]) for k, v in f.maps.items()},
        logits=tuple(f.logits.shape[1:]),
        embedding=tuple(f.embedding.shape[1:]),
    )


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


def cifar_batch(dataset: Any, n: int = 32) -> dict[str, torch.Tensor]:
    """The first ``n`` rows of a raw split, prepared without augmentation and collated."""
    from hf_distill.data import collate, prepare_split

    split = prepare_split(dataset, CIFAR_MEAN, CIFAR_STD, 32, train=False, max_samples=n)
    return collate([split.dataset[i] for i in range(n)])


def build_method(
    cls: type[DistillationLoss],
    kwargs: dict[str, Any],
    student: FeatureSpec,
    teacher: FeatureSpec,
    data: DataInfo | None = None,
) -> DistillationLoss:
    """Instantiate a method, resolve its layers against the specs' names and build it, as the trainer does."""
    m = cls(**kwargs)
    m.resolve_layers(student.names, teacher.names)
    m.build(student, teacher, data or DataInfo(num_samples=64, num_classes=10))
    return m


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


def method_step(
    cls: type[DistillationLoss],
    kwargs: dict[str, Any],
    s_spec: FeatureSpec,
    t_spec: FeatureSpec,
    state: dict[str, torch.Tensor],
    student: Features,
    teacher: Features,
    labels: torch.Tensor,
) -> dict[str, Any]:
    """One loss evaluation + backward; returns the loss, its terms, the student-feature and parameter gradients."""
    m = build_method(cls, kwargs, s_spec, t_spec)
    m.load_state_dict(state)
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
    rank: int,
    world: int,
    cls: type[DistillationLoss],
    kwargs: dict[str, Any],
    s_spec: FeatureSpec,
    t_spec: FeatureSpec,
    state: dict[str, torch.Tensor],
    student: Features,
    teacher: Features,
    labels: torch.Tensor,
) -> dict[str, Any]:
    n = labels.shape[0] // world
    lo, hi = rank * n, (rank + 1) * n
    return method_step(
        cls, kwargs, s_spec, t_spec, state, _slice(student, lo, hi), _slice(teacher, lo, hi), labels[lo:hi]
    )


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
    full = method_step(cls, {**kwargs, "gather": False}, s_spec, t_spec, state, student, teacher, labels)
    parts = run_world(
        _shard_worker,
        cls,
        {**kwargs, "gather": True},
        s_spec,
        t_spec,
        state,
        student,
        teacher,
        labels,
        world_size=world_size,
    )
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


# -- a few real training steps ------------------------------------------------------------------------------------------
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
    from hf_distill.models.taps import TapRequest, feature_tap

    teacher = zoo_model(teacher_arch, seed=1).eval().requires_grad_(False)
    student = zoo_model(student_arch, seed=0)
    x, y = batch["pixel_values"], batch["labels"]
    t_tap, s_tap = feature_tap(teacher), feature_tap(student)

    def spec(model: torch.nn.Module, tap: Any) -> FeatureSpec:
        f = zoo_features(model.eval(), x[:2])
        return FeatureSpec(
            names=tuple(tap.names),
            maps={k: tuple(v.shape[1:]) for k, v in f.maps.items()},
            logits=tuple(f.logits.shape[1:]),
            embedding=tuple(f.embedding.shape[1:]),
        )

    m = build_method(cls, kwargs, spec(student, s_tap), spec(teacher, t_tap))
    s_req = TapRequest(logits=True, embedding=True, maps=tuple(m.student_layers))
    t_req = TapRequest(logits=True, embedding=True, maps=tuple(m.teacher_layers))
    with torch.no_grad():
        tf = t_tap(teacher.train(), x, t_req)
    teacher.eval()
    params = list(student.parameters()) + list(m.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    w = cls.default_weight if scale is None else scale
    student.train()
    m.train()
    losses = []
    for _ in range(steps + 1):
        loss = sum(m(s_tap(student, x, s_req), tf, StepInfo(labels=y)).values())
        losses.append(float(loss.detach()))
        if len(losses) > steps:
            break
        opt.zero_grad()
        (w * loss).backward()
        opt.step()
    return losses
