"""Test-only helpers shared by the ICD / DKD / CSKD / SKD tests: a real CIFAR-10 mini batch, teacher features
computed once, and a few SGD steps of a small zoo student under one method."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from hf_distill.losses.base import DataInfo, DistillationLoss, Features, FeatureSpec, StepInfo
from tests.conftest import SUBSET, TEACHER_DIR

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.247, 0.243, 0.261)


@functools.lru_cache(maxsize=2)
def real_batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images of assets/cifar10-subset (CIFAR normalization, no augmentation)."""
    from hf_distill.data import collate, load_image_dataset, prepare_split

    ds = load_image_dataset(str(SUBSET), "train")
    split = prepare_split(ds, CIFAR_MEAN, CIFAR_STD, 32, train=False, max_samples=n)
    b = collate([split.dataset[i] for i in range(n)])
    return b["pixel_values"], b["labels"]


def _spec(model: torch.nn.Module, f: Features) -> FeatureSpec:
    from hf_distill.models.taps import feature_tap

    return FeatureSpec(
        names=tuple(feature_tap(model).names),
        maps={k: tuple(v.shape[1:]) for k, v in f.maps.items()},
        logits=tuple(f.logits.shape[1:]),
        embedding=tuple(f.embedding.shape[1:]),
    )


def zoo(arch: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialized CIFAR-zoo model with 10 classes."""
    from hf_distill.models.modeling_cifar import create_cifar_model

    torch.manual_seed(seed)
    return create_cifar_model(arch, num_labels=10)


def features(model: torch.nn.Module, x: torch.Tensor) -> Features:
    """Logits and embedding of ``model`` on ``x`` through the feature tap (keeps the autograd graph)."""
    from hf_distill.models.taps import TapRequest, feature_tap

    return feature_tap(model)(model, x, TapRequest(logits=True, embedding=True))


@functools.lru_cache(maxsize=2)
def teacher_on_batch(n: int = 16) -> tuple[Features, FeatureSpec]:
    """Features of a frozen teacher on :func:`real_batch`: the pretrained CIFAR-10 resnet56 when the asset exists
    (fed the student-normalized batch converted to its statistics), otherwise a random-init zoo resnet14."""
    x, _ = real_batch(n)
    if (TEACHER_DIR / "config.json").exists():
        from hf_distill.models.loading import load_model
        from hf_distill.models.normalization import InputSpec, TeacherInput, input_spec

        teacher = load_model(str(TEACHER_DIR), role="teacher").eval()
        x = TeacherInput(InputSpec(CIFAR_MEAN, CIFAR_STD, 32), input_spec(teacher))(x)
    else:
        teacher = zoo("resnet14", seed=1).eval()
    with torch.no_grad():
        f = features(teacher, x)
    return f.detach(), _spec(teacher, f)


def train_losses(
    method: DistillationLoss,
    steps: int = 6,
    lr: float = 0.05,
    n: int = 16,
    student_arch: str = "resnet8",
    step_info: Callable[[torch.Tensor], StepInfo] | None = None,
) -> list[float]:
    """Build ``method`` for a small zoo student and the teacher of :func:`teacher_on_batch`, then run ``steps``
    SGD steps (momentum 0.9) on the method's loss alone over the student and the method's parameters.

    Returns:
        The method's loss before each step and after the last one (``steps + 1`` values).
    """
    x, y = real_batch(n)
    tf, t_spec = teacher_on_batch(n)
    student = zoo(student_arch, seed=0)
    student.eval()
    with torch.no_grad():
        s_spec = _spec(student, features(student, x[:2]))
    student.train()
    method.resolve_layers(s_spec.names, t_spec.names)
    method.build(s_spec, t_spec, DataInfo(num_samples=n, num_classes=10))
    opt = torch.optim.SGD(list(student.parameters()) + list(method.parameters()), lr=lr, momentum=0.9)
    info = step_info(y) if step_info is not None else StepInfo(labels=y)
    losses: list[float] = []
    for i in range(steps + 1):
        loss = sum(method(features(student, x), tf, info).values())
        losses.append(float(loss.detach()))
        if i == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses
