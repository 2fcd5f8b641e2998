"""Each model's own preprocessing: the train and eval transforms of a student, seeded per (seed, epoch, row).

Three pipelines, picked by ``--train_transform`` (``auto`` picks by the student):

* ``cifar`` — the CIFAR benchmarks' augmentation (random crop with zero padding of size/8, horizontal flip) and a
  plain resize at evaluation; ``auto`` for the CIFAR zoo. Bit for bit the pipeline every earlier run used.
* ``timm`` — timm's data config (``resolve_data_config`` / ``create_transform``): RandomResizedCrop, flip, colour
  jitter, the model's mean/std and interpolation; resize to size/``crop_pct`` then center crop at evaluation.
  ``auto`` for timm models.
* ``processor`` — a transformers model's image processor at evaluation, and the transformers image-classification
  example's augmentation for training (RandomResizedCrop at the processor's size, flip, the processor's mean/std).
  ``auto`` for transformers models that have a processor.

A transform is called as ``transform(image, seed)``: with a seed (training) every random draw comes from RNGs seeded
by it (torch's CPU generator, ``random`` and numpy, restored afterwards), so a row's augmentation depends only on
(seed, epoch, row) and exact resume and the teacher cache keep working.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn

from ..models.normalization import input_spec, timm_pretrained_cfg

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset or transform that cannot be used as it is; the message says how to fix it (also importable as
    ``hf_distill.data.datasets.DataError``: defined here, below the data module, which uses these transforms)."""


#: the values of ``--train_transform``
TRANSFORM_KINDS = ("auto", "cifar", "timm", "processor")
#: the model type of the CIFAR zoo's transformers config (hf_distill.models.configuration_cifar)
ZOO_MODEL_TYPE = "hf_distill_cifar"


@contextlib.contextmanager
def preserved_rng(cuda: bool = False) -> Iterator[None]:
    """Put torch's CPU generator, ``random`` and numpy (with ``cuda``, every CUDA generator too) back as they were
    before the block, whatever it drew."""
    torch_state = torch.random.default_generator.get_state()
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda_states = torch.cuda.get_rng_state_all() if cuda and torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.random.default_generator.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, ``random`` and numpy with ``seed`` for the block, then restore their states.

    CUDA generators are left alone (``torch.manual_seed`` would reseed them too): the training step's own random
    draws are unchanged by the data pipeline, in the main process as in workers.
    """
    with preserved_rng():
        torch.random.default_generator.manual_seed(int(seed))
        random.seed(int(seed))
        np.random.seed(int(seed) % 2**32)
        yield


class CifarTransform:
    """The CIFAR pipeline: resize to ``image_size`` (bilinear) when the image has another size; for training a
    random crop with zero padding of ``image_size // 8`` px and a horizontal flip, drawn from a generator seeded by
    the row's seed; then normalization."""

    kind = "cifar"

    def __init__(self, mean: Sequence[float], std: Sequence[float], image_size: int, train: bool) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.padding = max(1, self.image_size // 8)

    @property
    def description(self) -> str:
        resize = f"resize to {self.image_size} px (bilinear) when needed"
        steps = (
            f"{resize}, random crop {self.image_size} with {self.padding} px zero padding, horizontal flip"
            if self.train
            else resize
        )
        return f"cifar: {steps}, normalize {_stats(self.mean, self.std)}"

    def __call__(self, image: PIL.Image.Image, seed: int | None = None) -> Tensor:
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), resample=PIL.Image.BILINEAR)
        x = TF.pil_to_tensor(image).float().div_(255)
        if self.train:
            g = torch.Generator().manual_seed(int(seed or 0))
            dx, dy, flip = torch.randint(0, 2 * self.padding + 1, (3,), generator=g).tolist()
            p = self.padding
            x = torch.nn.functional.pad(x, (p, p, p, p))[
                :, dy : dy + self.image_size, dx : dx + self.image_size
            ]
            if flip % 2:
                x = x.flip(-1)
        return (x - self.mean) / self.std


class SeededTransform:
    """A torchvision-style transform (PIL image -> tensor) run under :func:`seeded_rng` when given a seed.

    Args:
        transform: the transform (a ``torchvision.transforms.Compose``, timm's ``create_transform`` output, ...).
        kind: the pipeline's name (``timm``, ``processor``).
        mean, std: the normalization it applies.
        image_size: the side of the square it returns.
        train: whether it augments.
    """

    def __init__(
        self, transform, kind: str, mean: Sequence[float], std: Sequence[float], image_size: int, train: bool
    ) -> None:
        self.transform = transform
        self.kind = kind
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.padding = 0

    @property
    def description(self) -> str:
        return f"{self.kind}: {_steps(self.transform)}"

    def __call__(self, image: PIL.Image.Image, seed: int | None = None) -> Tensor:
        if seed is None or not self.train:
            return self.transform(image)
        with seeded_rng(seed):
            return self.transform(image)


class ProcessorEval:
    """A transformers image processor as an eval transform: one image in, its ``pixel_values`` out."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image: PIL.Image.Image) -> Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"{type(self.processor).__name__}()"


def _stats(mean: Tensor, std: Tensor) -> str:
    def fmt(t: Tensor) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + ")"

    return f"mean {fmt(mean)} std {fmt(std)}"


def _steps(transform) -> str:
    """A one-line account of a Compose: each step's class name and its main parameter."""
    steps = getattr(transform, "transforms", [transform])
    out = []
    for t in steps:
        name = type(t).__name__
        detail = [
            f"{k}={v}"
            for k, v in (
                ("size", getattr(t, "size", None)),
                ("scale", getattr(t, "scale", None)),
                ("interpolation", _interp_name(getattr(t, "interpolation", None))),
                ("mean", _rounded(getattr(t, "mean", None))),
                ("std", _rounded(getattr(t, "std", None))),
            )
            if v is not None and name not in ("MaybeToTensor", "ToTensor")
        ]
        if name == "ColorJitter":
            detail = [f"brightness={t.brightness}", f"contrast={t.contrast}", f"saturation={t.saturation}"]
        out.append(name + (f"({', '.join(detail)})" if detail else ""))
    return ", ".join(out)


def _interp_name(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return "random"
    return getattr(value, "value", str(value))


def _rounded(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    return tuple(round(float(v), 4) for v in torch.as_tensor(value).flatten().tolist())


@dataclass(frozen=True)
class ImagePipeline:
    """The train and eval transforms chosen for a student, and the input they produce."""

    kind: str
    train: Any
    eval: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    #: the evaluation in timm's data-config terms (:data:`EVAL_DATA_KEYS`), which a timm student records in its
    #: config (:func:`record_eval_transform`); None for the processor pipeline
    eval_data_config: dict[str, Any] | None = None
    #: the processor pipeline's evaluation *is* this image processor (the model's own, or one for ``--image_size`` /
    #: ``--crop_pct``); the student is saved with it (``processing_class``)
    eval_processor: Any = None

    def describe(self) -> dict[str, str]:
        """What the card shows: ``{"pipeline", "train", "eval"}``."""
        return {"pipeline": self.kind, "train": self.train.description, "eval": self.eval.description}


#: the keys of timm's data config that describe an evaluation transform
EVAL_DATA_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def squash_data_config(size: int, mean, std) -> dict[str, Any]:
    """The cifar pipeline's evaluation in timm's data-config terms: the whole image resized to ``size x size``
    (bilinear), timm's "squash" at crop 1.0."""
    return {
        "input_size": (3, int(size), int(size)),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
    }


def record_eval_transform(model: nn.Module, pipeline: ImagePipeline) -> bool:
    """Write ``pipeline``'s evaluation into a timm student's ``config.pretrained_cfg``, which a ``TimmWrapper``
    saves as its preprocessing (its timm module keeps the architecture's defaults, e.g. 224 px, crop 0.875): the
    saved student then reloads, exports and preprocesses as its accuracy was measured. Returns whether it did (only
    timm wrappers with an ``eval_data_config`` are recorded)."""
    core = getattr(model, "module", model)
    config = getattr(core, "config", None)
    if pipeline.eval_data_config is None or getattr(core, "timm_model", None) is None or config is None:
        return False
    saved = dict(getattr(config, "pretrained_cfg", None) or {})
    saved.update({k: list(v) if isinstance(v, tuple) else v for k, v in pipeline.eval_data_config.items()})
    config.pretrained_cfg = saved
    return True


def _timm_module(model: nn.Module) -> nn.Module | None:
    core = getattr(model, "module", model)
    inner = getattr(core, "timm_model", None)
    if inner is not None:
        return inner
    return core if isinstance(getattr(core, "pretrained_cfg", None), dict) else None


def is_zoo_model(model: nn.Module) -> bool:
    """A CIFAR-zoo model: the transformers zoo class, or a zoo architecture built through timm (``cifar_*``)."""
    config = getattr(getattr(model, "module", model), "config", None)
    if getattr(config, "model_type", None) == ZOO_MODEL_TYPE:
        return True
    timm_module = _timm_module(model)
    arch = (getattr(timm_module, "pretrained_cfg", None) or {}).get("architecture", "")
    return str(arch).startswith("cifar_")


def find_image_processor(model: nn.Module):
    """The image processor saved with a transformers model (its folder or Hub id), or None."""
    config = getattr(getattr(model, "module", model), "config", None)
    name = getattr(config, "_name_or_path", None)
    if not name:
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name)
    except Exception:  # noqa: BLE001 - no processor (or none reachable): the caller picks another pipeline
        return None


def _check_options(image_size: int | None, crop_pct: float | None) -> None:
    if image_size is not None and int(image_size) <= 0:
        raise DataError(f"--image_size must be a positive number of pixels, got {image_size}.")
    if crop_pct is not None and not 0.0 < float(crop_pct) <= 1.0:
        raise DataError(
            f"--crop_pct {crop_pct} would crop a square larger than the resized image: use a value in (0, 1] (the "
            "eval image is resized to image_size / crop_pct, then center-cropped to image_size)."
        )


def resolve_kind(model: nn.Module, kind: str = "auto", processor=None) -> tuple[str, Any]:
    """Which pipeline ``kind`` means for ``model`` (``auto`` resolved), and the image processor when it is one.

    Raises:
        DataError: an unknown kind, or ``processor`` for a model that has no image processor.
    """
    if kind not in TRANSFORM_KINDS:
        raise DataError(f"Unknown --train_transform {kind!r}: use one of {', '.join(TRANSFORM_KINDS)}.")
    if kind == "cifar" or (kind == "auto" and is_zoo_model(model)):
        return "cifar", None
    if kind == "timm" or (kind == "auto" and _timm_module(model) is not None):
        return "timm", None
    processor = processor or find_image_processor(model)
    if processor is not None and getattr(processor, "image_mean", None) is not None:
        return "processor", processor
    if kind == "processor":
        raise DataError(
            f"--train_transform processor: the student {type(model).__name__} has no image processor (no "
            "preprocessor_config.json beside it). Use --train_transform timm or cifar."
        )
    logger.info(
        "The student has no image processor: using the cifar pipeline (--train_transform to change it)."
    )
    return "cifar", None


def model_pipeline(
    model: nn.Module,
    kind: str = "auto",
    image_size: int | None = None,
    crop_pct: float | None = None,
    processor=None,
) -> ImagePipeline:
    """The train and eval transforms of ``model`` (see the module docstring).

    Args:
        model: the student.
        kind: ``auto``, ``cifar``, ``timm`` or ``processor`` (``--train_transform``).
        image_size: the input side (``--image_size``; default: the model's).
        crop_pct: the eval crop fraction (``--crop_pct``; default: the model's, timm and processor pipelines).
        processor: the model's image processor, when the caller has it.

    Raises:
        DataError: a bad option value (one line naming it and the fix).
    """
    _check_options(image_size, crop_pct)
    kind, processor = resolve_kind(model, kind, processor)
    if kind == "cifar":
        if crop_pct is not None:
            raise DataError(
                "--crop_pct applies to the timm and processor pipelines; the cifar pipeline evaluates the whole "
                "image. Drop --crop_pct, or pass --train_transform timm."
            )
        spec = input_spec(model)
        size = int(image_size or spec.image_size)
        return ImagePipeline(
            "cifar",
            CifarTransform(spec.mean, spec.std, size, train=True),
            CifarTransform(spec.mean, spec.std, size, train=False),
            tuple(spec.mean),
            tuple(spec.std),
            size,
            squash_data_config(size, spec.mean, spec.std),
        )
    if kind == "timm":
        return _timm_pipeline(model, image_size, crop_pct)
    return _processor_pipeline(model, processor, image_size, crop_pct)


def _timm_pipeline(model: nn.Module, image_size: int | None, crop_pct: float | None) -> ImagePipeline:
    from timm.data import create_transform, resolve_data_config

    timm_module = _timm_module(model)
    if timm_module is not None:
        # the config a saved wrapper recorded (its trained size), else the timm module's (timm_pretrained_cfg)
        config = resolve_data_config({}, pretrained_cfg=timm_pretrained_cfg(model), model=timm_module)
    else:  # another model through timm's pipeline: its own statistics and size, timm's defaults otherwise
        spec = input_spec(model)
        config = resolve_data_config(
            {},
            pretrained_cfg={
                "input_size": (3, spec.image_size, spec.image_size),
                "mean": spec.mean,
                "std": spec.std,
            },
        )
    if image_size is not None:
        config["input_size"] = (3, int(image_size), int(image_size))
    if crop_pct is not None:
        config["crop_pct"] = float(crop_pct)
    size = int(config["input_size"][-1])
    if config["input_size"][-2] != size:
        raise DataError(
            f"The student's timm data config asks for a non-square input {config['input_size'][1:]}: pass "
            "--image_size N for square N x N inputs."
        )
    mean, std = tuple(config["mean"]), tuple(config["std"])
    eval_config = {k: config[k] for k in EVAL_DATA_KEYS if k in config}
    eval_config.setdefault("crop_mode", "center")  # timm's default when a config does not name one
    return ImagePipeline(
        "timm",
        SeededTransform(create_transform(**config, is_training=True), "timm", mean, std, size, train=True),
        SeededTransform(create_transform(**config, is_training=False), "timm", mean, std, size, train=False),
        mean,
        std,
        size,
        eval_config,
    )


def _interpolation(processor):
    from torchvision.transforms import InterpolationMode

    resample = getattr(processor, "resample", None)
    try:
        return InterpolationMode[PIL.Image.Resampling(int(resample)).name]
    except (TypeError, ValueError, KeyError):
        return InterpolationMode.BILINEAR


def processor_size(processor) -> int | None:
    """The side of the square a processor returns: its crop size, else its resize target (a dict, or transformers'
    ``SizeDict``), else None."""
    for value in (getattr(processor, "crop_size", None), getattr(processor, "size", None)):
        if isinstance(value, int):
            return value
        get = value.get if isinstance(value, dict) else lambda k, v=value: getattr(v, k, None)
        for key in ("height", "shortest_edge"):
            if value is not None and get(key):
                return int(get(key))
    return None


def _processor_pipeline(model, processor, image_size: int | None, crop_pct: float | None) -> ImagePipeline:
    from torchvision import transforms as T

    size = int(image_size or processor_size(processor) or input_spec(model).image_size)
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    interpolation = _interpolation(processor)
    tail = [T.PILToTensor(), T.ConvertImageDtype(torch.float32), T.Normalize(mean, std)]
    train = T.Compose(
        [T.RandomResizedCrop(size, interpolation=interpolation), T.RandomHorizontalFlip(), *tail]
    )
    if image_size is not None or crop_pct is not None:
        resize = int(size / (crop_pct or getattr(processor, "crop_pct", None) or 0.875))
        processor = resize_then_crop_processor(processor, resize, size, mean, std)
    return ImagePipeline(
        "processor",
        SeededTransform(train, "processor", mean, std, size, train=True),
        SeededTransform(ProcessorEval(processor), "processor", mean, std, size, train=False),
        mean,
        std,
        size,
        eval_processor=processor,
    )


def resize_then_crop_processor(processor, resize: int, size: int, mean, std):
    """A transformers image processor that resizes the shorter side to ``resize`` (the model processor's
    resampling) and center-crops ``size x size``, then rescales and normalizes: the evaluation of ``--image_size``
    / ``--crop_pct``, in a form that is saved with the student and reloads with ``AutoImageProcessor``."""
    from transformers import BitImageProcessor

    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": int(resize)},
        resample=getattr(processor, "resample", None) or PIL.Image.Resampling.BILINEAR,
        do_center_crop=True,
        crop_size={"height": int(size), "width": int(size)},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[float(v) for v in mean],
        image_std=[float(v) for v in std],
        do_convert_rgb=True,
    )


__all__ = [
    "EVAL_DATA_KEYS",
    "TRANSFORM_KINDS",
    "CifarTransform",
    "DataError",
    "ImagePipeline",
    "ProcessorEval",
    "SeededTransform",
    "find_image_processor",
    "is_zoo_model",
    "model_pipeline",
    "record_eval_transform",
    "resolve_kind",
    "squash_data_config",
    "seeded_rng",
]
