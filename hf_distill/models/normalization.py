"""Which normalization and input size a model expects, and how to hand a student-normalized batch to a teacher.

Teacher and student often come with different preprocessing (the akamaster CIFAR teachers use ImageNet statistics,
the benchmark students CIFAR-100 statistics; a timm teacher may want 224 px). The data pipeline normalizes for the
student; :class:`TeacherInput` converts each batch to what the teacher was trained on, as timm's distillation task
does, instead of silently feeding it the wrong statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """Normalization and square input size of a model."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int


def _size(v) -> int | None:
    if v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, dict):
        return int(v.get("height") or v.get("shortest_edge") or next(iter(v.values())))
    for key in ("height", "shortest_edge"):  # transformers 5's SizeDict: attributes, not keys
        if getattr(v, key, None):
            return int(getattr(v, key))
    return int(v[-1])


def timm_pretrained_cfg(model: nn.Module) -> dict[str, Any] | None:
    """The timm data config a model declares: for a transformers ``TimmWrapper`` its config's ``pretrained_cfg``
    (what a saved model recorded, e.g. the 96 px it was trained at), else the timm module's own.

    A wrapper loaded from a folder rebuilds its timm module from timm's registry, whose ``pretrained_cfg`` is the
    architecture's default (resnet10t: 176 px); the saved one is only in the wrapper's config.
    """
    core = getattr(model, "module", model)
    saved = getattr(getattr(core, "config", None), "pretrained_cfg", None)
    if isinstance(saved, dict) and saved:
        return saved
    own = getattr(getattr(core, "timm_model", core), "pretrained_cfg", None)
    return own if isinstance(own, dict) and own else None


def input_spec(model: nn.Module, processor=None) -> InputSpec:
    """Read the expected normalization and input size of ``model``.

    Looks, in order, at an image processor, the zoo config (``image_mean``/``image_std``/``image_size``), timm's
    ``pretrained_cfg``, and the transformers config; falls back to ImageNet statistics.
    """
    core = getattr(model, "module", model)
    cfg = getattr(core, "config", None)
    if processor is not None and getattr(processor, "image_mean", None) is not None:
        size = _size(getattr(processor, "crop_size", None)) or _size(getattr(processor, "size", None))
        return InputSpec(
            tuple(processor.image_mean),
            tuple(processor.image_std),
            size or _size(getattr(cfg, "image_size", 224)) or 224,
        )
    if cfg is not None and getattr(cfg, "image_mean", None) is not None:
        return InputSpec(
            tuple(cfg.image_mean), tuple(cfg.image_std), _size(getattr(cfg, "image_size", 32)) or 32
        )
    tm = getattr(core, "timm_model", core)
    pc = timm_pretrained_cfg(model)
    if pc:
        size = int(pc.get("input_size", (3, 224, 224))[-1])
        # a ViT created with img_size=... keeps its pretrained_cfg's size: its patch embedding knows the real one
        embed = getattr(tm, "patch_embed", None)
        if getattr(embed, "img_size", None) and not getattr(embed, "dynamic_img_size", False):
            size = int(embed.img_size[-1])
        return InputSpec(tuple(pc.get("mean", IMAGENET_MEAN)), tuple(pc.get("std", IMAGENET_STD)), size)
    return InputSpec(IMAGENET_MEAN, IMAGENET_STD, _size(getattr(cfg, "image_size", None)) or 224)


class TeacherInput(nn.Module):
    """Convert a batch normalized for the student into the teacher's normalization and input size."""

    def __init__(self, student: InputSpec, teacher: InputSpec) -> None:
        super().__init__()
        self.identity = student == teacher
        s_mean, s_std = torch.tensor(student.mean), torch.tensor(student.std)
        t_mean, t_std = torch.tensor(teacher.mean), torch.tensor(teacher.std)
        # x_t = (x_s * s_std + s_mean - t_mean) / t_std = x_s * scale + shift
        self.register_buffer("scale", (s_std / t_std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_mean - t_mean) / t_std).view(1, -1, 1, 1), persistent=False)
        self.resize = None if student.image_size == teacher.image_size else teacher.image_size

    def forward(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        x = x * self.scale.to(x) + self.shift.to(x)
        if self.resize is not None:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x
