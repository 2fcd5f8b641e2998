"""Save a timm student (transformers' ``TimmWrapperForImageClassification``) in timm's own Hub format.

``save_pretrained`` of the wrapper writes ``timm_model.``-prefixed weights and a config without preprocessing;
timm's format (``config.json`` with ``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg``, and
unprefixed ``model.safetensors``) is what ``timm.create_model("hf-hub:...", pretrained=True)`` reads, and
transformers reads it too (``AutoModelForImageClassification`` maps a timm config to the wrapper, and
``AutoImageProcessor`` builds ``TimmWrapperImageProcessor`` from its ``pretrained_cfg``). The export uses timm's
own :func:`timm.models.save_for_hf`, with the preprocessing the student was trained with.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..data.labels import label_names
from ..data.transforms import squash_data_config
from ..models.normalization import InputSpec


def timm_data_config(spec: InputSpec, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """timm's data config of the student's evaluation transform, at the size and normalization of ``spec``.

    The interpolation, crop fraction and crop mode come from ``recorded`` (the wrapper config's ``pretrained_cfg``,
    where the recipe records the evaluation its accuracy was measured with:
    :func:`hf_distill.data.transforms.record_eval_transform`); without them, the cifar pipeline's evaluation (the
    whole image resized to the square, bilinear).

    Args:
        spec: the student's input spec.
        recorded: the model config's ``pretrained_cfg``, if any.

    Returns:
        A dict for :func:`timm.models.save_for_hf`'s ``data_config``.
    """
    config = squash_data_config(spec.image_size, spec.mean, spec.std)
    recorded = recorded or {}
    if all(recorded.get(k) is not None for k in ("interpolation", "crop_pct")):
        config.update(
            crop_pct=float(recorded["crop_pct"]),
            crop_mode=str(recorded.get("crop_mode") or "center"),
            interpolation=str(recorded["interpolation"]),
        )
    return config


def save_timm_folder(model: Any, folder: str | os.PathLike, spec: InputSpec) -> str:
    """Write ``model`` (a ``TimmWrapperForImageClassification``) into ``folder`` in timm's Hub format.

    Replaces ``config.json`` and ``model.safetensors`` written by ``save_pretrained`` (and drops a sharded index,
    if any), keeping every other file.

    Args:
        model: the wrapped timm student.
        folder: the model folder.
        spec: the input spec it was trained with.

    Returns:
        The path of the written ``config.json``.

    Raises:
        TypeError: ``model`` is not a timm wrapper.
    """
    from timm.models import save_for_hf

    timm_model = getattr(model, "timm_model", None)
    if timm_model is None:
        raise TypeError(f"{type(model).__name__} is not a timm wrapper (it has no .timm_model).")
    cfg = model.config
    labels = label_names(getattr(cfg, "id2label", None))
    model_config: dict[str, Any] = {}
    if labels and len(labels) == timm_model.num_classes:
        model_config["label_names"] = labels
    os.makedirs(folder, exist_ok=True)
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = set(json.load(f)["weight_map"].values())
        for s in shards:
            p = os.path.join(folder, s)
            if os.path.isfile(p):
                os.remove(p)
        os.remove(index)
    save_for_hf(
        timm_model,
        str(folder),
        model_config=model_config,
        model_args=dict(getattr(cfg, "model_args", None) or {}),
        safe_serialization=True,
        data_config=timm_data_config(spec, getattr(cfg, "pretrained_cfg", None)),
    )
    config_path = os.path.join(folder, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    # transformers' wrapper passes num_classes itself and fails on a duplicate in model_args; timm reads the
    # root-level num_classes. Keep the config loadable by both.
    args = config.get("model_args") or {}
    args.pop("num_classes", None)
    if args:
        config["model_args"] = args
    else:
        config.pop("model_args", None)
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    if not os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)):
        raise RuntimeError(f"timm's save_for_hf wrote no {SAFE_WEIGHTS_NAME} into {folder}.")
    return config_path


__all__ = ["save_timm_folder", "timm_data_config"]
