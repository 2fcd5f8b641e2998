"""CIFAR ResNets (BasicBlock, three stages).

Two families:

* the RepDistiller/CRD benchmark ResNets (``resnet8`` ... ``resnet110`` with 16/16/32/64 channels,
  ``resnet8x4`` and ``resnet32x4`` with 32/64/128/256), whose shortcut is a 1x1 convolution + BN wherever
  the shape changes (He et al.'s "option B"), initialised with Kaiming-normal (fan_out);
* the original CIFAR ResNets of He et al. 2016 with the parameter-free "option A" shortcut
  (``resnet20_a`` ... ``resnet110_a``, 16/32/64 channels), as trained in akamaster/pytorch_resnet_cifar10:
  the input is subsampled by 2 and zero-padded with ``planes // 4`` channels on each side.

Block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU. The stage pre-activation map is the sum before
that final ReLU in the stage's last block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CifarBackbone,
    conv_bn_relu,
    register_architecture,
)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """He et al.'s option A shortcut: subsample by 2, zero-pad ``pad`` channels on each side (no weights)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU. ``forward`` returns (output, pre-activation sum)."""

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        pre = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(pre), pre


class CifarResNet(CifarBackbone):
    """Three-stage CIFAR ResNet with BasicBlocks.

    Args:
        depth: 6n+2 (n blocks per stage).
        channels: (stem, stage1, stage2, stage3) widths.
        shortcut: ``"conv"`` (1x1 conv + BN, RepDistiller) or ``"pad"`` (parameter-free option A, akamaster).
        num_classes: number of logits (0: no classifier).
        in_chans: input channels.
        init_scheme: ``"repdistiller"`` (Kaiming-normal fan_out on convs, default Linear) or
            ``"akamaster"`` (Kaiming-normal fan_in on convs and Linear weights).
    """

    def __init__(
        self,
        depth: int,
        channels: Sequence[int] = (16, 16, 32, 64),
        shortcut: str = "conv",
        num_classes: int = 100,
        in_chans: int = 3,
        init_scheme: str = "repdistiller",
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}.")
        if shortcut not in ("conv", "pad"):
            raise ValueError(f"shortcut must be 'conv' or 'pad', got {shortcut!r}.")
        if init_scheme not in ("repdistiller", "akamaster"):
            raise ValueError(f"init_scheme must be 'repdistiller' or 'akamaster', got {init_scheme!r}.")
        if len(channels) != 4:
            raise ValueError(f"channels must give 4 widths (stem, stage1, stage2, stage3), got {channels}.")
        self.depth = depth
        self.init_scheme = init_scheme
        n = (depth - 2) // 6
        self.stem = conv_bn_relu(in_chans, channels[0], 3)
        in_planes = channels[0]
        strides = (1, 2, 2)
        for s, (planes, stride) in enumerate(zip(channels[1:], strides, strict=True), start=1):
            blocks = []
            for b in range(n):
                block_stride = stride if b == 0 else 1
                sc: nn.Module | None = None
                if block_stride != 1 or in_planes != planes:
                    if shortcut == "conv":
                        sc = nn.Sequential(
                            nn.Conv2d(in_planes, planes, kernel_size=1, stride=block_stride, bias=False),
                            nn.BatchNorm2d(planes),
                        )
                    else:
                        if block_stride != 2 or planes != 2 * in_planes:
                            raise ValueError("option A shortcuts need stride 2 and doubled channels.")
                        sc = PadShortcut(planes // 4)
                blocks.append(BasicBlock(in_planes, planes, block_stride, sc))
                in_planes = planes
            self.add_module(f"stage{s}", nn.Sequential(*blocks))
        self._finish_init(
            channels[3], ["stem", "stage1", "stage2", "stage3"], channels, reductions=(1, 1, 2, 4)
        )

    def _forward_body(
        self, x: Tensor, preact: bool = False, stop_index: int | None = None
    ) -> tuple[list[Tensor], Tensor]:
        return self._forward_stages(self.stem(x), (self.stage1, self.stage2, self.stage3), preact, stop_index)

    def _init_conv(self, module: nn.Conv2d) -> None:
        """RepDistiller: Kaiming-normal (fan_out, relu); akamaster: Kaiming-normal (fan_in)."""
        if self.init_scheme == "repdistiller":
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            nn.init.kaiming_normal_(module.weight)

    def _init_linear(self, module: nn.Linear) -> None:
        """PyTorch default (RepDistiller); akamaster then redraws the weight Kaiming-normal (fan_in)."""
        module.reset_parameters()
        if self.init_scheme == "akamaster":
            nn.init.kaiming_normal_(module.weight)


_REPDISTILLER = "HobbitLong/RepDistiller models/resnet.py"
_AKAMASTER = "akamaster/pytorch_resnet_cifar10 resnet.py (He et al. 2016, option A)"


def _resnet(depth: int, channels: Sequence[int], num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(depth, channels, shortcut="conv", num_classes=num_classes, **kwargs)


def _resnet_a(depth: int, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(
        depth, (16, 16, 32, 64), shortcut="pad", num_classes=num_classes, init_scheme="akamaster", **kwargs
    )


@register_architecture("resnet8", source=_REPDISTILLER)
def resnet8(num_classes: int = 100, **kwargs) -> CifarResNet:
    """ResNet-8 (1 block per stage, 16/16/32/64 channels)."""
    return _resnet(8, (16, 16, 32, 64), num_classes, **kwargs)


@register_architecture("resnet14", source=_REPDISTILLER)
def resnet14(num_classes: int = 100, **kwargs) -> CifarResNet:
    """ResNet-14 (2 blocks per stage, 16/16/32/64 channels)."""
    return _resnet(14, (16, 16, 32, 64), num_classes, **kwargs)


@register_architecture("resnet20", source=_REPDISTILLER)
def resnet20(num_classes: int = 100, **kwargs) -> CifarResNet:
    """ResNet-20 (3 blocks per stage, 16/16/32/64 channels, conv shortcuts)."""
    return _resnet(20, (16, 16, 32, 64), num_classes, **kwargs)


@register_architecture("resnet32", source=_REPDISTILLER)
def resnet32(num_classes: int = 100, **kwargs) -> CifarResNet:
    """ResNet-32 (5 blocks per stage, 16/16/32/64 channels, conv shortcuts)."""
    return _resnet(32, (16, 16, 32, 64), num_classes, **kwargs)


@register_architecture("resnet44", source=_REPDISTILLER)
def resnet44(num_classes: int = 100, **kwargs) -> CifarResNet:
    """ResNet-44 (7 blocks per stage, 16/16/32/64 channels, conv shortcuts)."""
    return _resnet(44, (16, 16, 32, 64), num_classes, **kwargs)


@register_architecture("resnet56", source=_REPDISTILLER)
def resnet56(num_classes: int = 100, **kwargs) -> CifarResNet:
    """ResNet-56 (9 blocks per stage, 16/16/32/64 channels, conv shortcuts)."""
    return _resnet(56, (16, 16, 32, 64), num_classes, **kwargs)


@register_architecture("resnet110", source=_REPDISTILLER)
def resnet110(num_classes: int = 100, **kwargs) -> CifarResNet:
    """ResNet-110 (18 blocks per stage, 16/16/32/64 channels, conv shortcuts)."""
    return _resnet(110, (16, 16, 32, 64), num_classes, **kwargs)


@register_architecture("resnet8x4", source=_REPDISTILLER)
def resnet8x4(num_classes: int = 100, **kwargs) -> CifarResNet:
    """ResNet-8x4 (1 block per stage, 32/64/128/256 channels)."""
    return _resnet(8, (32, 64, 128, 256), num_classes, **kwargs)


@register_architecture("resnet32x4", source=_REPDISTILLER)
def resnet32x4(num_classes: int = 100, **kwargs) -> CifarResNet:
    """ResNet-32x4 (5 blocks per stage, 32/64/128/256 channels)."""
    return _resnet(32, (32, 64, 128, 256), num_classes, **kwargs)


_A = {"num_classes": 10, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "source": _AKAMASTER}


@register_architecture("resnet20_a", **_A)
def resnet20_a(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-20 of He et al. with option A shortcuts (0.27M parameters at 10 classes)."""
    return _resnet_a(20, num_classes, **kwargs)


@register_architecture("resnet32_a", **_A)
def resnet32_a(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-32 of He et al. with option A shortcuts (0.46M parameters at 10 classes)."""
    return _resnet_a(32, num_classes, **kwargs)


@register_architecture("resnet44_a", **_A)
def resnet44_a(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-44 of He et al. with option A shortcuts (0.66M parameters at 10 classes)."""
    return _resnet_a(44, num_classes, **kwargs)


@register_architecture("resnet56_a", **_A)
def resnet56_a(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-56 of He et al. with option A shortcuts (0.85M parameters at 10 classes)."""
    return _resnet_a(56, num_classes, **kwargs)


@register_architecture("resnet110_a", **_A)
def resnet110_a(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-110 of He et al. with option A shortcuts (1.7M parameters at 10 classes)."""
    return _resnet_a(110, num_classes, **kwargs)


__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet20_a",
    "resnet32",
    "resnet32_a",
    "resnet32x4",
    "resnet44",
    "resnet44_a",
    "resnet56",
    "resnet56_a",
    "resnet110",
    "resnet110_a",
]
