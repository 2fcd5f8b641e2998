"""Shared base class and registry of the CIFAR model zoo used by the distillation papers.

Every zoo backbone subclasses :class:`CifarBackbone` and registers a factory in :data:`CIFAR_ARCHITECTURES`
through :func:`register_architecture`. The registry is filled when the architecture files are imported;
``configuration_cifar`` and ``modeling_cifar`` import all of them.

This file imports only ``torch`` and the standard library, so that it can travel as remote code next to
``modeling_cifar.py`` in a saved model folder.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: tuple[float, float, float] = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: short architecture name -> factory ``(num_classes=..., **kwargs) -> CifarBackbone``
CIFAR_ARCHITECTURES: dict[str, Callable[..., CifarBackbone]] = {}
#: short architecture name -> default configuration (input size, normalization, classifier name, ...)
CIFAR_DEFAULT_CFGS: dict[str, dict[str, Any]] = {}


class CifarBackbone(nn.Module):
    """Base class of every zoo backbone.

    Subclasses build their layers, then call :meth:`_finish_init` (which sets :attr:`num_features`,
    :attr:`feature_names` and :attr:`feature_info`, creates the classifier and calls :meth:`init_weights`),
    implement :meth:`_forward_body` (usually through :meth:`_forward_stages`) and choose their initialisation
    scheme by overriding :meth:`_init_conv` / :meth:`_init_linear` (BatchNorm always gets
    :func:`init_batchnorm`).

    Attributes:
        feature_names: names of the tappable maps, shallow to deep (``stem``, ``stage1``, ...).
        feature_info: timm-style list of dicts (``num_chs``, ``reduction``, ``module``), one per map.
        num_features: dimension of the pooled embedding (input of the classifier).
        num_classes: number of logits (0 means no classifier: ``forward`` returns the embedding).
        pretrained_cfg: timm-style dict (input_size, mean, std, num_classes, classifier, first_conv, ...).
    """

    def __init__(self, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = 0
        self.feature_names: list[str] = []
        self.feature_info: list[dict[str, Any]] = []
        self.architecture: str | None = None
        self.pretrained_cfg: dict[str, Any] = {}
        # subclasses assign ``self.fc`` (via _make_classifier) after their layers, so it comes last in state dicts
        self.fc: nn.Module

    # ------------------------------------------------------------------ to implement in subclasses
    def _forward_body(
        self, x: Tensor, preact: bool = False, stop_index: int | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """Run the network up to the input of the global pooling.

        Args:
            x: input images (B, C, H, W).
            preact: return pre-activation stage maps (as RepDistiller's ``preact=True``).
            stop_index: if given, stop once the map at this position of ``feature_names`` is computed.

        Returns:
            (maps, final): one map per feature name (only up to ``stop_index`` when stopping early) and the
            final feature map fed to the pooling (the last computed map when stopping early).
        """
        raise NotImplementedError

    def _init_conv(self, module: nn.Conv2d) -> None:
        """Initialise one ``Conv2d``; default: PyTorch's own initialisation."""
        module.reset_parameters()

    def _init_linear(self, module: nn.Linear) -> None:
        """Initialise one ``Linear``; default: PyTorch's own initialisation."""
        module.reset_parameters()

    # ------------------------------------------------------------------ helpers for subclasses
    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _set_features(self, names: Sequence[str], channels: Sequence[int], reductions: Sequence[int]) -> None:
        self.feature_names = list(names)
        self.feature_info = [
            {"num_chs": int(c), "reduction": int(r), "module": n}
            for n, c, r in zip(names, channels, reductions, strict=True)
        ]

    def _finish_init(
        self, num_features: int, names: Sequence[str], channels: Sequence[int], reductions: Sequence[int]
    ) -> None:
        """Last step of a subclass ``__init__``: embedding size, feature info, classifier, initialisation.

        The classifier is created here, after every other layer, so that ``fc`` comes last in state dicts.
        """
        self.num_features = num_features
        self._set_features(names, channels, reductions)
        self.fc = self._make_classifier(self.num_classes)
        self.init_weights()

    def _forward_stages(
        self,
        x: Tensor,
        stages: Sequence[nn.Module],
        preact: bool = False,
        stop_index: int | None = None,
        step: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]] | None = None,
        head: nn.Module | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """The usual :meth:`_forward_body`: stem map, then one map per stage, then an optional head.

        Args:
            x: output of the stem (the first feature map).
            stages: ``stage1``, ``stage2``, ... in order.
            preact: keep each stage's pre-activation map instead of its output.
            stop_index: stop once the map at this position is computed (0 = the stem).
            step: ``(stage, x) -> (output, pre-activation)``; default :func:`forward_block_pairs`.
            head: applied to the last stage output to give the final map (when not stopping early).

        Returns:
            (maps, final) as :meth:`_forward_body`.
        """
        run = forward_block_pairs if step is None else step
        maps = [x]
        if stop_index == 0:
            return maps, x
        for s, stage in enumerate(stages, start=1):
            x, pre = run(stage, x)
            maps.append(pre if preact else x)
            if stop_index == s:
                return maps, x
        return maps, x if head is None else head(x)

    def init_weights(self) -> None:
        """(Re-)initialise every module with the architecture's original scheme."""
        for module in self.modules():
            self.init_module(module)

    def init_module(self, module: nn.Module) -> None:
        """Initialise the parameters of one (leaf) module with this architecture's original scheme:
        :meth:`_init_conv` for ``Conv2d``, :func:`init_batchnorm` for ``BatchNorm2d``, :meth:`_init_linear`
        for ``Linear``; other modules are left alone."""
        if isinstance(module, nn.Conv2d):
            self._init_conv(module)
        elif isinstance(module, nn.BatchNorm2d):
            init_batchnorm(module)
        elif isinstance(module, nn.Linear):
            self._init_linear(module)

    # ------------------------------------------------------------------ public API
    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of :attr:`pretrained_cfg` (timm backwards compatibility)."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, value: dict[str, Any]) -> None:
        self.pretrained_cfg = value

    def forward_taps(self, x: Tensor, preact: bool = False) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """One forward pass returning every feature map, the embedding and the logits.

        Args:
            x: input images (B, C, H, W).
            preact: if True, stage maps are taken before the final ReLU of their last block
                (RepDistiller's ``preact=True``); maps without such a ReLU are unchanged.

        Returns:
            (maps, embedding, logits): ordered dict ``feature_name -> (B, C, H, W)``, (B, num_features)
            and (B, num_classes).
        """
        maps, final = self._forward_body(x, preact=preact)
        embedding = self.forward_head(final, pre_logits=True)
        logits = self.fc(embedding)
        return dict(zip(self.feature_names, maps, strict=True)), embedding, logits

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the last feature map (input of the global pooling)."""
        return self._forward_body(x)[1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling + flatten, then the classifier unless ``pre_logits``.

        Args:
            x: last feature map (B, C, H, W).
            pre_logits: return the pooled embedding instead of the logits.

        Returns:
            (B, num_features) embedding or (B, num_classes) logits.
        """
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def _take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        n = len(self.feature_names)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices} must be between 1 and {n} (the number of feature maps).")
            take = list(range(n - indices, n))
        else:
            take = [int(i) + n if int(i) < 0 else int(i) for i in indices]
            bad = [i for i in take if not 0 <= i < n]
            if bad or not take:
                raise ValueError(
                    f"indices {list(indices)} out of range for {n} feature maps {self.feature_names}."
                )
        return take

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm-style access to the intermediate (post-activation) feature maps.

        Args:
            x: input images.
            indices: ``int`` = the last n maps, a sequence = positions in :attr:`feature_names`, None = all.
            norm: accepted for timm compatibility; the zoo applies no extra norm to intermediates.
            stop_early: stop the forward pass after the deepest requested map.
            output_fmt: only ``"NCHW"`` is supported.
            intermediates_only: return only the list of maps.

        Returns:
            the list of maps, or (final feature map, list of maps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported, only 'NCHW'.")
        take = self._take_indices(indices)
        maps, final = self._forward_body(x, stop_index=max(take) if stop_early else None)
        intermediates = [maps[i] for i in take]
        if intermediates_only:
            return intermediates
        return final, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] | None = None, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm API: drop the classifier (if ``prune_head``) and return the normalized indices.

        The layers after the deepest requested map are kept (the zoo networks are small).

        Returns:
            the list of positions in :attr:`feature_names`.
        """
        if prune_head:
            self.reset_classifier(0)
        return self._take_indices(indices)

    def get_classifier(self) -> nn.Module:
        """Return the classifier module (``fc``)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0 = none).

        Args:
            num_classes: new number of classes.
            global_pool: accepted for timm compatibility; only average pooling is supported.
        """
        if global_pool not in (None, "", "avg"):
            raise ValueError(f"global_pool={global_pool!r} is not supported, only 'avg'.")
        self.num_classes = num_classes
        param = next(self.parameters(), None)
        self.fc = self._make_classifier(num_classes)
        if param is not None:
            self.fc.to(device=param.device, dtype=param.dtype)
        for module in self.fc.modules():
            self.init_module(module)


# ---------------------------------------------------------------------- shared init helpers
def init_batchnorm(module: nn.Module) -> None:
    """Weight 1, bias 0, fresh running statistics (through ``nn.init`` so loaders can guard it)."""
    if getattr(module, "weight", None) is not None:
        nn.init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    if getattr(module, "running_mean", None) is not None:
        nn.init.zeros_(module.running_mean)
        nn.init.ones_(module.running_var)
    if getattr(module, "num_batches_tracked", None) is not None:
        nn.init.zeros_(module.num_batches_tracked)


def init_conv_fan_out_normal(module: nn.Conv2d) -> None:
    """Normal(0, sqrt(2 / (k_h * k_w * out_channels))) weight, zero bias (the Wide-ResNet / VGG scheme)."""
    n = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
    nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / n))
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_linear_normal(module: nn.Linear) -> None:
    """Normal(0, 0.01) weight, zero bias (the MobileNetV2 / VGG classifier scheme)."""
    nn.init.normal_(module.weight, 0.0, 0.01)
    nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------- shared layers and forward helpers
def conv_bn_relu(in_chans: int, out_chans: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """``conv`` (no bias, padding ``kernel_size // 2``) - ``bn`` - ``act`` (in-place ReLU), as named children."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, bias=False),
            bn=nn.BatchNorm2d(out_chans),
            act=nn.ReLU(inplace=True),
        )
    )


def forward_block_pairs(stage: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a stage of blocks whose ``forward`` returns (output, pre-activation); return the last pair."""
    pre = x
    for block in stage:
        x, pre = block(x)
    return x, pre


def forward_plain(stage: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a stage with no separate pre-activation map: (output, output)."""
    x = stage(x)
    return x, x


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups (ShuffleNet): (B, g*c, H, W) -> channel order c-major."""
    if groups == 1:
        return x
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


# ---------------------------------------------------------------------- registry
def register_architecture(
    name: str,
    *,
    num_classes: int = 100,
    mean: tuple[float, float, float] = CIFAR100_MEAN,
    std: tuple[float, float, float] = CIFAR100_STD,
    first_conv: str = "stem.conv",
    source: str = "",
) -> Callable[[Callable[..., CifarBackbone]], Callable[..., CifarBackbone]]:
    """Decorator that registers a backbone factory under a short name.

    The registered factory defaults ``num_classes`` to the architecture's default, then sets the backbone's
    ``architecture`` and ``pretrained_cfg``.

    Args:
        name: short name (``resnet56``, ``wrn_40_2``, ...).
        num_classes: default number of classes (100 for the CIFAR-100 benchmark, 10 for the CIFAR-10 models).
        mean: default normalization mean.
        std: default normalization std.
        first_conv: module path of the first convolution.
        source: where the architecture definition comes from.

    Returns:
        the decorator.
    """

    def decorator(fn: Callable[..., CifarBackbone]) -> Callable[..., CifarBackbone]:
        cfg = {
            "architecture": name,
            "input_size": (3, 32, 32),
            "mean": tuple(mean),
            "std": tuple(std),
            "num_classes": num_classes,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "classifier": "fc",
            "first_conv": first_conv,
            "source": source,
        }

        @functools.wraps(fn)
        def factory(num_classes: int = num_classes, **kwargs: Any) -> CifarBackbone:
            model = fn(num_classes=num_classes, **kwargs)
            model.architecture = name
            model.pretrained_cfg = dict(cfg)
            return model

        CIFAR_DEFAULT_CFGS[name] = cfg
        CIFAR_ARCHITECTURES[name] = factory
        return factory

    return decorator


def get_architecture(name: str) -> Callable[..., CifarBackbone]:
    """Return the factory of a registered architecture.

    Args:
        name: short name, e.g. ``resnet56``; a ``cifar_`` prefix is accepted.

    Returns:
        the factory.

    Raises:
        ValueError: if the name is unknown (the message lists the valid names).
    """
    short = name[len("cifar_") :] if name.startswith("cifar_") else name
    if short not in CIFAR_ARCHITECTURES:
        raise ValueError(
            f"Unknown CIFAR architecture {name!r}; valid names are: {', '.join(CIFAR_ARCHITECTURES)}."
        )
    return CIFAR_ARCHITECTURES[short]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_ARCHITECTURES",
    "CIFAR_DEFAULT_CFGS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CifarBackbone",
    "channel_shuffle",
    "conv_bn_relu",
    "count_parameters",
    "forward_block_pairs",
    "forward_plain",
    "get_architecture",
    "init_batchnorm",
    "init_conv_fan_out_normal",
    "init_linear_normal",
    "register_architecture",
]
