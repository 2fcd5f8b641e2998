"""What a user already has, made into a model the Hub can load: a raw ``timm.create_model(...)`` module becomes a
``TimmWrapperForImageClassification`` around the same module (same parameters, no copy), so that
``save_pretrained``/``from_pretrained`` and ``timm.create_model("hf-hub:...")`` work; the dataset's class names
replace the ``LABEL_i`` placeholders of a config that has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, TimmWrapperConfig, TimmWrapperForImageClassification


class ModelWrapError(ValueError):
    """A model that cannot be saved in a loadable form; the message says what to pass instead."""


def is_raw_timm_model(model: nn.Module) -> bool:
    """A module built by ``timm.create_model`` (it carries timm's ``pretrained_cfg``), not yet wrapped."""
    return not isinstance(model, PreTrainedModel) and isinstance(getattr(model, "pretrained_cfg", None), dict)


def _creation_args(model: nn.Module) -> dict[str, Any]:
    """The ``timm.create_model`` arguments that change a model's shapes and that a module still shows: a vision
    transformer's input and patch size (timm keeps no record of its creation arguments)."""
    embed = getattr(model, "patch_embed", None)
    args: dict[str, Any] = {}
    if embed is not None:
        for name in ("img_size", "patch_size"):
            value = getattr(embed, name, None)
            if value is not None:
                args[name] = list(value) if isinstance(value, (tuple, list)) else value
    return args


def wrap_timm_model(
    model: nn.Module, id2label: dict[int, str] | None = None
) -> TimmWrapperForImageClassification:
    """A ``TimmWrapperForImageClassification`` whose ``timm_model`` is ``model`` itself.

    The wrapper's config must rebuild the same architecture when the saved folder is loaded; a model created with
    shape-changing arguments that the module does not show is refused here, before training, not after it.

    Raises:
        ModelWrapError: the config would rebuild a model of other shapes.
    """
    arch = model.pretrained_cfg.get("architecture") or type(model).__name__.lower()
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    labels = {"id2label": dict(id2label)} if id2label else {"num_labels": num_classes}
    config = TimmWrapperConfig(architecture=arch, model_args=_creation_args(model) or None, **labels)
    config.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if _json_value(v)}
    with torch.device("meta"):
        wrapper = TimmWrapperForImageClassification(config)
    rebuilt = {k: tuple(v.shape) for k, v in wrapper.timm_model.state_dict().items()}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if rebuilt != own:
        differ = sorted(k for k in set(rebuilt) | set(own) if rebuilt.get(k) != own.get(k))
        raise ModelWrapError(
            f"The timm model {arch!r} was created with arguments that cannot be read back from it (the saved "
            f"folder would rebuild other shapes, e.g. {differ[0]}: {own.get(differ[0])} vs "
            f"{rebuilt.get(differ[0])}). Pass TimmWrapperForImageClassification(TimmWrapperConfig(architecture="
            f"{arch!r}, model_args={{...your create_model arguments...}}, num_labels=N)) as the model instead."
        )
    wrapper.timm_model = model
    return wrapper


def _json_value(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, tuple, dict))


def name_classes(model: nn.Module, names: Sequence[str] | None) -> None:
    """Give a config with placeholder labels (``LABEL_0``...) the dataset's class names, when their count fits."""
    config = getattr(model, "config", None)
    if config is None or not names or len(names) != getattr(config, "num_labels", -1):
        return
    current = [config.id2label.get(i, "") for i in range(config.num_labels)]
    if all(n == f"LABEL_{i}" for i, n in enumerate(current)):
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}


def model_name(model: nn.Module | None) -> str | None:
    """How a model says where it came from: ``config._name_or_path``, else a timm module's Hub id or architecture."""
    if model is None:
        return None
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    if name:
        return str(name)
    inner = getattr(model, "timm_model", model)
    cfg = getattr(inner, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or cfg.get("hf_hub_id")  # built here, not necessarily with the Hub weights


__all__ = ["ModelWrapError", "is_raw_timm_model", "model_name", "name_classes", "wrap_timm_model"]
