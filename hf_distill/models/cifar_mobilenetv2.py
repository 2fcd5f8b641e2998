"""MobileNetV2 for CIFAR as used by RepDistiller/CRD (``mobile_half``: width 0.5, expansion T=6).

Stem conv3x3 stride 2 - BN - ReLU, seven groups of inverted residual blocks
(t, c, n, s) = (1,16,1,1) (T,24,2,1) (T,32,3,2) (T,64,4,2) (T,96,3,1) (T,160,3,2) (T,320,1,1) with widths
scaled by ``width_mult``, a 1x1 conv to 1280 channels - BN - ReLU, global pooling and the classifier.
Unlike the ImageNet MobileNetV2, every block (also t=1) keeps its 1x1 expansion conv.

Feature maps, as RepDistiller's feature list: ``stem`` (16x16), ``stage1`` = after groups 1-2 (16x16),
``stage2`` = group 3 (8x8), ``stage3`` = groups 4-5 (4x4), ``stage4`` = groups 6-7 (2x2). Blocks end with a
linear bottleneck (no ReLU), so the pre-activation maps are the same as the others.
"""

from __future__ import annotations

from torch import Tensor, nn

from .cifar_common import (
    CifarBackbone,
    conv_bn_relu,
    forward_plain,
    init_conv_fan_out_normal,
    init_linear_normal,
    register_architecture,
)


class InvertedResidual(nn.Module):
    """1x1 expand - BN - ReLU - 3x3 depthwise - BN - ReLU - 1x1 project - BN (+ identity if same shape)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}.")
        hidden = inp * expand_ratio
        self.use_residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion, channels, blocks, stride); expansion None = the network's T
_SETTINGS: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
# which of the seven groups make up each tapped stage
_STAGE_GROUPS: list[tuple[int, ...]] = [(0, 1), (2,), (3, 4), (5, 6)]


class CifarMobileNetV2(CifarBackbone):
    """MobileNetV2 for 32x32 inputs.

    Args:
        expand_ratio: T, the expansion of all groups but the first.
        width_mult: channel multiplier.
        num_classes: number of logits (0: no classifier).
        in_chans: input channels.
    """

    def __init__(
        self, expand_ratio: int = 6, width_mult: float = 0.5, num_classes: int = 100, in_chans: int = 3
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans)
        self.expand_ratio = expand_ratio
        self.width_mult = width_mult
        stem_ch = int(32 * width_mult)
        self.stem = conv_bn_relu(in_chans, stem_ch, 3, 2)
        groups: list[list[nn.Module]] = []
        group_out: list[int] = []
        group_red: list[int] = []
        in_ch, reduction = stem_ch, 2
        for t, c, n, s in _SETTINGS:
            out_ch = int(c * width_mult)
            blocks: list[nn.Module] = []
            for i in range(n):
                blocks.append(
                    InvertedResidual(in_ch, out_ch, s if i == 0 else 1, expand_ratio if t is None else t)
                )
                in_ch = out_ch
            reduction *= s
            groups.append(blocks)
            group_out.append(out_ch)
            group_red.append(reduction)
        for k, members in enumerate(_STAGE_GROUPS, start=1):
            self.add_module(f"stage{k}", nn.Sequential(*[b for g in members for b in groups[g]]))
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head_conv = conv_bn_relu(in_ch, last_channel, 1, 1)
        self._finish_init(
            last_channel,
            ["stem", "stage1", "stage2", "stage3", "stage4"],
            [stem_ch] + [group_out[g[-1]] for g in _STAGE_GROUPS],
            [2] + [group_red[g[-1]] for g in _STAGE_GROUPS],
        )

    def _forward_body(
        self, x: Tensor, preact: bool = False, stop_index: int | None = None
    ) -> tuple[list[Tensor], Tensor]:
        # blocks end with a linear bottleneck: pre-activation maps are the outputs
        stages = (self.stage1, self.stage2, self.stage3, self.stage4)
        return self._forward_stages(self.stem(x), stages, preact, stop_index, forward_plain, self.head_conv)

    # initialisation: convs Normal(0, sqrt(2/(k*k*out))) with zero bias, BN 1/0, Linear Normal(0, 0.01), zero bias
    _init_conv = staticmethod(init_conv_fan_out_normal)
    _init_linear = staticmethod(init_linear_normal)


@register_architecture("mobilenetv2", source="HobbitLong/RepDistiller models/mobilenetv2.py (mobile_half)")
def mobilenetv2(num_classes: int = 100, **kwargs) -> CifarMobileNetV2:
    """The CRD benchmark's "MobileNetV2" (RepDistiller ``mobile_half``: T=6, width 0.5, 1280-d embedding)."""
    kwargs.setdefault("expand_ratio", 6)
    kwargs.setdefault("width_mult", 0.5)
    return CifarMobileNetV2(num_classes=num_classes, **kwargs)


__all__ = ["CifarMobileNetV2", "InvertedResidual", "mobilenetv2"]
