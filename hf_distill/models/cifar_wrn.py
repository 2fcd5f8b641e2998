"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016), as in the RepDistiller/CRD benchmark.

Pre-activation blocks: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus an identity shortcut, or a 1x1
convolution applied to the activated input when the width or resolution changes. The stem is a single
conv3x3 (16 channels); after the three groups come BN-ReLU, global pooling and the classifier.

Feature maps: ``stem`` (the first conv), ``stage1..3`` (raw group outputs, i.e. residual sums, which are not
rectified). Their pre-activation versions, as RepDistiller defines them, are the outputs of the BN that
follows each map (the first BN of the next group, the final BN for ``stage3``), before its ReLU; they are
taken from the same forward pass.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_common import CifarBackbone, init_conv_fan_out_normal, register_architecture


class WideBasicBlock(nn.Module):
    """Pre-activation wide block. ``forward`` returns (output, BN output of the input before its ReLU)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.shortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        normed = self.bn1(x)
        act = F.relu(normed)
        # identity shortcut takes the raw input; the projection shortcut takes the activated input
        residual = x if self.shortcut is None else self.shortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return residual + out, normed


class CifarWideResNet(CifarBackbone):
    """WRN-depth-k for 32x32 inputs.

    Args:
        depth: 6n+4 (n blocks per group).
        widen_factor: k (group widths 16k, 32k, 64k).
        num_classes: number of logits (0: no classifier).
        in_chans: input channels.
        drop_rate: dropout between the two convs of each block (0 in the benchmark).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}.")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth = depth
        self.widen_factor = widen_factor
        self.stem = nn.Conv2d(in_chans, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = channels[0]
        for s, (planes, stride) in enumerate(zip(channels[1:], (1, 2, 2), strict=True), start=1):
            blocks = [
                WideBasicBlock(in_planes if b == 0 else planes, planes, stride if b == 0 else 1, drop_rate)
                for b in range(n)
            ]
            self.add_module(f"stage{s}", nn.Sequential(*blocks))
            in_planes = planes
        self.head_bn = nn.BatchNorm2d(channels[3])
        self._finish_init(
            channels[3], ["stem", "stage1", "stage2", "stage3"], channels, reductions=(1, 1, 2, 4)
        )

    def _forward_body(
        self, x: Tensor, preact: bool = False, stop_index: int | None = None
    ) -> tuple[list[Tensor], Tensor]:
        x = self.stem(x)
        maps = [x]
        if stop_index == 0:
            return maps, x
        for s, stage in enumerate((self.stage1, self.stage2, self.stage3), start=1):
            for b, block in enumerate(stage):
                x, normed = block(x)
                if preact and b == 0 and s > 1:
                    maps[s - 1] = normed  # BN (before ReLU) of the previous group's output
            maps.append(x)
            if stop_index == s:
                return maps, x
        normed = self.head_bn(x)
        if preact:
            maps[3] = normed
        return maps, F.relu(normed)

    # initialisation: convs Normal(0, sqrt(2/(k*k*out))), BN 1/0, Linear PyTorch-default weight and zero bias
    _init_conv = staticmethod(init_conv_fan_out_normal)

    def _init_linear(self, module: nn.Linear) -> None:
        module.reset_parameters()
        nn.init.zeros_(module.bias)


_SOURCE = "HobbitLong/RepDistiller models/wrn.py"
_REG = {"source": _SOURCE, "first_conv": "stem"}


@register_architecture("wrn_16_1", **_REG)
def wrn_16_1(num_classes: int = 100, **kwargs) -> CifarWideResNet:
    """WRN-16-1 (2 blocks per group, widths 16/32/64)."""
    return CifarWideResNet(16, 1, num_classes=num_classes, **kwargs)


@register_architecture("wrn_16_2", **_REG)
def wrn_16_2(num_classes: int = 100, **kwargs) -> CifarWideResNet:
    """WRN-16-2 (2 blocks per group, widths 32/64/128)."""
    return CifarWideResNet(16, 2, num_classes=num_classes, **kwargs)


@register_architecture("wrn_40_1", **_REG)
def wrn_40_1(num_classes: int = 100, **kwargs) -> CifarWideResNet:
    """WRN-40-1 (6 blocks per group, widths 16/32/64)."""
    return CifarWideResNet(40, 1, num_classes=num_classes, **kwargs)


@register_architecture("wrn_40_2", **_REG)
def wrn_40_2(num_classes: int = 100, **kwargs) -> CifarWideResNet:
    """WRN-40-2 (6 blocks per group, widths 32/64/128)."""
    return CifarWideResNet(40, 2, num_classes=num_classes, **kwargs)


__all__ = ["CifarWideResNet", "WideBasicBlock", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]
