"""Registers every CIFAR zoo architecture with timm as ``cifar_<short name>``.

After ``import hf_distill`` (which imports this module)::

    timm.list_models("cifar_*")                            # all zoo architectures
    timm.create_model("cifar_resnet56", num_classes=10)    # a CifarBackbone
    timm.create_model("cifar_wrn_40_2", features_only=True, out_indices=(1, 2, 3))  # list of maps

``features_only=True`` is served by timm's ``FeatureGetterNet`` through the backbones'
``forward_intermediates``; ``out_indices`` are positions in ``feature_names`` (default: all maps).
No pretrained weights are registered: ``pretrained=True`` raises timm's "No pretrained weights exist" error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .cifar_common import CIFAR_ARCHITECTURES, CIFAR_DEFAULT_CFGS, CifarBackbone
from .modeling_cifar import CifarForImageClassification  # noqa: F401  (imports every architecture file)

TIMM_PREFIX = "cifar_"


def _timm_cfg(short: str) -> dict[str, Any]:
    cfg = CIFAR_DEFAULT_CFGS[short]
    return {
        "url": "",
        "num_classes": cfg["num_classes"],
        "input_size": cfg["input_size"],
        "pool_size": None,
        "crop_pct": cfg["crop_pct"],
        "interpolation": cfg["interpolation"],
        "mean": cfg["mean"],
        "std": cfg["std"],
        "first_conv": cfg["first_conv"],
        "classifier": cfg["classifier"],
        "notes": (f"architecture: {cfg['source']}",) if cfg.get("source") else (),
    }


default_cfgs = generate_default_cfgs({TIMM_PREFIX + short: _timm_cfg(short) for short in CIFAR_ARCHITECTURES})


def _create(short: str, pretrained: bool = False, **kwargs: Any) -> CifarBackbone:
    # features_only: timm's FeatureGetterNet calls forward_intermediates; out_indices=None means all maps
    # (prune_intermediate_layers turns it into the list of positions)
    return build_model_with_cfg(
        CIFAR_ARCHITECTURES[short],
        TIMM_PREFIX + short,
        pretrained,
        feature_cfg={"feature_cls": "getter", "out_indices": None},
        **kwargs,
    )


def _make_entrypoint(short: str) -> Callable[..., CifarBackbone]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> CifarBackbone:
        return _create(short, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = TIMM_PREFIX + short
    entrypoint.__qualname__ = TIMM_PREFIX + short
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"CIFAR zoo ``{short}`` ({CIFAR_DEFAULT_CFGS[short].get('source', '')})."
    return entrypoint


#: timm model name -> entrypoint
TIMM_ENTRYPOINTS: dict[str, Callable[..., CifarBackbone]] = {}
for _short in CIFAR_ARCHITECTURES:
    _fn = _make_entrypoint(_short)
    globals()[_fn.__name__] = _fn
    TIMM_ENTRYPOINTS[_fn.__name__] = register_model(_fn)


def timm_model_names() -> list[str]:
    """Return the timm names of all zoo architectures (``cifar_resnet8``, ...)."""
    return list(TIMM_ENTRYPOINTS)
