"""Build a teacher or student from one string: a local folder, a CIFAR-zoo name, a timm name or a Hub id.

Every model comes back as a transformers ``PreTrainedModel`` so that ``save_pretrained``/``from_pretrained`` and
``push_to_hub`` work for all of them:

* a folder with ``config.json`` -> ``AutoModelForImageClassification.from_pretrained`` (zoo folders included);
* ``cifar_resnet56`` (or ``resnet56``) -> the CIFAR zoo (:mod:`hf_distill.models.modeling_cifar`);
* ``timm/<name>`` or ``hf-hub:timm/<name>`` -> a pretrained timm model from the Hub, inside transformers'
  ``TimmWrapperForImageClassification``;
* any other timm architecture name (``resnet18``) -> a freshly initialized timm model in the same wrapper;
* anything else -> a transformers Hub id (``microsoft/resnet-18``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForImageClassification,
    PreTrainedModel,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)

from . import modeling_cifar  # noqa: F401  (registers the zoo with the Auto classes)
from .cifar_common import CIFAR_ARCHITECTURES
from .modeling_cifar import create_cifar_model
from .weights_errors import UNREADABLE_WEIGHTS, ModelLoadError, unreadable_weights  # noqa: E402, F401

ZOO_PREFIX = "cifar_"


#: the weights files transformers reads from a model folder
FOLDER_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def zoo_architecture(name: str) -> str | None:
    """``cifar_resnet56``/``resnet56`` -> ``resnet56`` if it is a zoo architecture, else None."""
    short = name[len(ZOO_PREFIX) :] if name.startswith(ZOO_PREFIX) else name
    return short if short in CIFAR_ARCHITECTURES else None


def _label_kwargs(num_labels: int | None, id2label: dict[int, str] | None) -> dict[str, Any]:
    if id2label:
        id2label = {int(k): v for k, v in id2label.items()}
        return {
            "num_labels": len(id2label),
            "id2label": id2label,
            "label2id": {v: k for k, v in id2label.items()},
        }
    return {"num_labels": num_labels} if num_labels else {}


def load_model(
    name_or_path: str,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    weights: str | None = None,
    role: str = "student",
    **kwargs: Any,
) -> PreTrainedModel:
    """Create or load an image classifier.

    Args:
        name_or_path: folder, zoo name, timm name or Hub id (see the module docstring).
        num_labels, id2label: the label set; for a pretrained folder whose head has another size, the head is
            re-initialized for a student and kept for a teacher (a teacher's head must be trained; the trainer
            checks it against the dataset, see :mod:`hf_distill.data.labels`).
        weights: an extra checkpoint file (``.safetensors``, ``.pt``/``.pth``/``.th``, including the akamaster
            CIFAR-10 ResNets) loaded into the built architecture.
        role: "student" or "teacher", for messages and head handling.

    Raises:
        ModelLoadError: unknown name, missing folder, or a checkpoint that does not fit the architecture.
    """
    labels = _label_kwargs(num_labels, id2label)
    if os.path.isdir(name_or_path):
        model = _from_folder(name_or_path, labels, role, **kwargs)
    elif (arch := zoo_architecture(name_or_path)) is not None:
        model = create_cifar_model(arch, labels.get("num_labels") or 100, id2label=labels.get("id2label"))
    elif name_or_path.startswith(("timm/", "hf-hub:timm/")):
        repo = name_or_path.removeprefix("hf-hub:")
        model = _from_folder(repo, labels, role, **kwargs)
    elif _is_timm_name(name_or_path):
        cfg = TimmWrapperConfig(architecture=name_or_path, **(labels or {"num_labels": 1000}))
        model = TimmWrapperForImageClassification(cfg)
    elif os.path.exists(name_or_path) or name_or_path.startswith((".", "/")):
        raise ModelLoadError(f"{role} {name_or_path!r} is not a model folder (it has no config.json).")
    else:
        model = _from_folder(name_or_path, labels, role, **kwargs)
    if weights is not None:
        model = load_weights(model, weights, role)
    return model


def _is_timm_name(name: str) -> bool:
    import timm

    from . import timm_cifar  # noqa: F401  (registers cifar_* with timm)

    return "/" not in name and timm.is_model(name)


def _from_folder(path: str, labels: dict[str, Any], role: str, **kwargs: Any) -> PreTrainedModel:
    try:
        if role == "student" and labels:
            return AutoModelForImageClassification.from_pretrained(
                path, ignore_mismatched_sizes=True, **labels, **kwargs
            )
        model = AutoModelForImageClassification.from_pretrained(path, **kwargs)
    except UNREADABLE_WEIGHTS as e:
        if os.path.isdir(path):
            files = [os.path.join(path, f) for f in FOLDER_WEIGHTS if os.path.isfile(os.path.join(path, f))]
            raise unreadable_weights(files[0] if files else path, e, role) from e
        raise
    except OSError as e:
        raise ModelLoadError(
            f"Cannot load the {role} {path!r}: it is neither a local model folder, a CIFAR-zoo name "
            f"(cifar_resnet56, ...: {', '.join(ZOO_PREFIX + a for a in sorted(CIFAR_ARCHITECTURES))}), a timm "
            f"architecture, nor a reachable Hub id ({e.__class__.__name__}: {str(e).splitlines()[0]})."
        ) from e
    # A teacher keeps its own trained head: the trainer compares its label space with the student's and the data's.
    return model


def read_state_dict(path: str, role: str = "model") -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict (safetensors or torch; nested 'state_dict'/'model' keys).

    Raises:
        ModelLoadError: the file is missing, unreadable (one line naming it) or holds no state dict.
    """
    if not os.path.isfile(path):
        raise ModelLoadError(f"Checkpoint file {path!r} does not exist.")
    try:
        if path.endswith(".safetensors"):
            import safetensors.torch

            return safetensors.torch.load_file(path, device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_WEIGHTS as e:
        raise unreadable_weights(path, e, role) from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path!r} does not hold a state dict.")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_akamaster(sd: dict[str, torch.Tensor]) -> bool:
    return "linear.weight" in sd and "layer1.0.conv1.weight" in sd and "conv1.weight" in sd


def _timm_filtered(module: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` through the ``checkpoint_filter_fn`` of ``module``'s timm file, as timm converts the checkpoints of
    older timm versions when it loads pretrained weights (Swin's of timm < 0.9: downsample at the end of a stage,
    ``head.`` for ``head.fc.``); ``sd`` unchanged where there is none or it fails (the strict check then reports)."""
    import sys

    convert = getattr(sys.modules.get(type(module).__module__), "checkpoint_filter_fn", None)
    if convert is None:
        return sd
    try:
        return dict(convert(dict(sd), module))
    except Exception:  # noqa: BLE001 - a foreign state dict: the strict check below names the mismatch
        return sd


def load_weights(model: PreTrainedModel, path: str, role: str = "model") -> PreTrainedModel:
    """Load a checkpoint file into ``model`` strictly, with one readable error when it does not fit."""
    from .convert_akamaster import blocks_per_stage, load_akamaster_checkpoint

    sd = read_state_dict(path, role)
    if _is_akamaster(sd):
        have = f"resnet{6 * blocks_per_stage(sd) + 2}_a"
        want = str(getattr(getattr(model, "config", None), "architecture", ""))
        if not (want.startswith("resnet") and want.endswith("_a")):
            raise ModelLoadError(
                f"{path!r} holds an akamaster option-A CIFAR ResNet ({have}), which does not fit the {role} "
                f"architecture {want or type(model).__name__}. Use --{role} cifar_{have}."
            )
        try:
            return load_akamaster_checkpoint(path, depth=int(want[len("resnet") : -len("_a")]))
        except ValueError as e:
            raise ModelLoadError(f"The {role} checkpoint does not match: {e}") from e
    target: nn.Module = model
    keys = set(target.state_dict())
    if not keys & set(sd) and hasattr(model, "timm_model"):
        # a timm model's own state dict (timm's checkpoints), without the wrapper's prefix
        target = model.timm_model
        keys = set(target.state_dict())
        if keys != set(sd):
            sd = _timm_filtered(target, sd)
    if not keys & set(sd) and hasattr(model, "model"):
        target = model.model  # a bare backbone state dict for a zoo model
        keys = set(target.state_dict())
    missing, unexpected = sorted(keys - set(sd)), sorted(set(sd) - keys)
    shape = [k for k in keys & set(sd) if tuple(sd[k].shape) != tuple(target.state_dict()[k].shape)]
    if missing or unexpected or shape:
        raise ModelLoadError(
            f"The checkpoint {path!r} does not match the {role} architecture {type(model).__name__}"
            f"{' (' + str(getattr(model.config, 'architecture', '')) + ')' if hasattr(model, 'config') else ''}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(shape)} with other shapes {shape[:3]}. Pick the architecture the checkpoint was trained with."
        )
    target.load_state_dict(sd, strict=True)
    return model
