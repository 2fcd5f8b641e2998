"""VGG with batch norm for CIFAR (no fully connected hidden layers), as in the RepDistiller/CRD benchmark.

Five conv blocks (conv3x3 with bias - BN - ReLU, repeated; the last ReLU of a block is applied outside it),
2x2 max pooling after blocks 0, 1 and 2 (after block 3 only for 64x64 inputs, as in the original code),
global average pooling and one linear classifier on 512 features.

Feature maps: ``stem`` (block 0 after ReLU), ``stage1..4`` (blocks 1-4; post-ReLU, or before the ReLU when
``preact=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_common import (
    CifarBackbone,
    init_conv_fan_out_normal,
    init_linear_normal,
    register_architecture,
)

#: widths of the convs of each of the five blocks
VGG_CFGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _make_block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [
            nn.Conv2d(in_channels, w, kernel_size=3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        ]
        in_channels = w
    return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied in forward


class CifarVGG(CifarBackbone):
    """VGG-BN for 32x32 inputs.

    Args:
        cfg: one of :data:`VGG_CFGS` (``S`` = vgg8, ``A`` = vgg11, ``B`` = vgg13, ``D`` = vgg16, ``E`` = vgg19).
        num_classes: number of logits (0: no classifier).
        in_chans: input channels.
    """

    def __init__(self, cfg: str, num_classes: int = 100, in_chans: int = 3) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans)
        if cfg not in VGG_CFGS:
            raise ValueError(f"Unknown VGG cfg {cfg!r}; valid: {', '.join(VGG_CFGS)}.")
        widths = VGG_CFGS[cfg]
        self.cfg = cfg
        self.stem = _make_block(widths[0], in_chans)
        for s in range(1, 5):
            self.add_module(f"stage{s}", _make_block(widths[s], widths[s - 1][-1]))
        self._finish_init(
            widths[4][-1],
            ["stem", "stage1", "stage2", "stage3", "stage4"],
            [w[-1] for w in widths],
            reductions=(1, 2, 4, 8, 8),
        )

    def _forward_body(
        self, x: Tensor, preact: bool = False, stop_index: int | None = None
    ) -> tuple[list[Tensor], Tensor]:
        pool_last = x.shape[2] == 64  # the original pools after block 3 only for 64x64 inputs

        def step(stage: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
            if stage is not self.stage4 or pool_last:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            pre = stage(x)
            return F.relu(pre), pre

        stages = (self.stage1, self.stage2, self.stage3, self.stage4)
        return self._forward_stages(F.relu(self.stem(x)), stages, preact, stop_index, step)

    # initialisation: convs Normal(0, sqrt(2/(k*k*out))) with zero bias, BN 1/0, Linear Normal(0, 0.01), zero bias
    _init_conv = staticmethod(init_conv_fan_out_normal)
    _init_linear = staticmethod(init_linear_normal)


_SOURCE = "HobbitLong/RepDistiller models/vgg.py (vgg*_bn)"
_REG = {"source": _SOURCE, "first_conv": "stem.0"}


@register_architecture("vgg8", **_REG)
def vgg8(num_classes: int = 100, **kwargs) -> CifarVGG:
    """VGG-8 with BN (one conv per block)."""
    return CifarVGG("S", num_classes=num_classes, **kwargs)


@register_architecture("vgg11", **_REG)
def vgg11(num_classes: int = 100, **kwargs) -> CifarVGG:
    """VGG-11 with BN."""
    return CifarVGG("A", num_classes=num_classes, **kwargs)


@register_architecture("vgg13", **_REG)
def vgg13(num_classes: int = 100, **kwargs) -> CifarVGG:
    """VGG-13 with BN."""
    return CifarVGG("B", num_classes=num_classes, **kwargs)


@register_architecture("vgg16", **_REG)
def vgg16(num_classes: int = 100, **kwargs) -> CifarVGG:
    """VGG-16 with BN."""
    return CifarVGG("D", num_classes=num_classes, **kwargs)


@register_architecture("vgg19", **_REG)
def vgg19(num_classes: int = 100, **kwargs) -> CifarVGG:
    """VGG-19 with BN."""
    return CifarVGG("E", num_classes=num_classes, **kwargs)


__all__ = ["VGG_CFGS", "CifarVGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]
