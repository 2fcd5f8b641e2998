"""The image processor saved with a student, and the input spec a saved model expects.

The processor reproduces hf_distill's evaluation transform exactly (resize to the student's square input size only
when needed, scale to [0, 1], normalize with the student's mean/std), so that ``AutoImageProcessor`` +
``AutoModelForImageClassification`` (and a transformers pipeline) see the same inputs the student was trained and
evaluated on:

* transformers and CIFAR-zoo students get a ``ViTImageProcessor`` (``preprocessor_config.json``);
* timm students keep their preprocessing in ``config.json``'s ``pretrained_cfg`` (timm's format), which
  transformers' ``TimmWrapperImageProcessor`` reads (see :mod:`hf_distill.hub.timm_export`).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import ViTImageProcessor

from ..models.normalization import InputSpec, input_spec

#: PIL's bilinear filter id (``PILImageResampling.BILINEAR``), as torchvision's ``Resize`` uses in training.
BILINEAR = 2


def student_image_processor(
    model: nn.Module | None = None, spec: InputSpec | None = None
) -> ViTImageProcessor:
    """An image processor with the student's input size and normalization.

    Args:
        model: the student (used when ``spec`` is not given).
        spec: the input spec the student was trained with (``DistillationTrainer.student_input``).

    Returns:
        A ``ViTImageProcessor`` (resize to ``size x size``, rescale by 1/255, normalize).

    Raises:
        ValueError: neither a model nor a spec.
    """
    if spec is None:
        if model is None:
            raise ValueError("student_image_processor needs the model or its InputSpec.")
        spec = input_spec(model)
    return ViTImageProcessor(
        do_resize=True,
        size={"height": int(spec.image_size), "width": int(spec.image_size)},
        resample=BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[float(v) for v in spec.mean],
        image_std=[float(v) for v in spec.std],
    )


def _size_of(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict) or hasattr(value, "get"):
        for key in ("height", "shortest_edge", "width"):
            v = value.get(key) if hasattr(value, "get") else None
            if v:
                return int(v)
        return None
    if isinstance(value, (list, tuple)):
        return int(value[-1])
    return None


def model_input_spec(model: nn.Module, processor: Any = None) -> InputSpec:
    """The normalization and input size of a *saved* model, as its processor or timm config describes it.

    Order: a timm processor's ``data_config``; a transformers processor's ``image_mean``/``size``; the timm
    ``pretrained_cfg`` stored in the model config (timm-format folders); then
    :func:`hf_distill.models.normalization.input_spec`.

    Args:
        model: the loaded classifier.
        processor: its image processor, if any.

    Returns:
        The :class:`InputSpec`.
    """
    data_config = getattr(processor, "data_config", None)
    if data_config:
        return InputSpec(
            tuple(float(v) for v in data_config["mean"]),
            tuple(float(v) for v in data_config["std"]),
            int(data_config["input_size"][-1]),
        )
    if processor is not None and getattr(processor, "image_mean", None) is not None:
        size = (
            _size_of(getattr(processor, "crop_size", None))
            if getattr(processor, "do_center_crop", False)
            else None
        )
        size = size or _size_of(getattr(processor, "size", None)) or input_spec(model).image_size
        return InputSpec(tuple(processor.image_mean), tuple(processor.image_std), int(size))
    cfg = getattr(model, "config", None)
    pc = getattr(cfg, "pretrained_cfg", None)
    if isinstance(pc, dict) and pc.get("mean") is not None:
        return InputSpec(
            tuple(float(v) for v in pc["mean"]),
            tuple(float(v) for v in pc["std"]),
            int(pc.get("input_size", (3, 224, 224))[-1]),
        )
    return input_spec(model)


__all__ = ["model_input_spec", "student_image_processor"]
