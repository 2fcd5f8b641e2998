"""ShuffleNet V1 and V2 for CIFAR, as in the RepDistiller/CRD benchmark (``ShuffleV1``, ``ShuffleV2``).

Both use a 1x1 conv (24 channels) - BN - ReLU stem at full resolution and three stages that each halve the
resolution, then global pooling and a linear classifier. They keep PyTorch's default initialisation.

ShuffleNet V1 (groups 3, widths 240/480/960, 4/8/4 blocks): bottleneck = grouped 1x1 - BN - ReLU - channel
shuffle - 3x3 depthwise - BN - grouped 1x1 - BN; a stride-2 block concatenates a 3x3 average-pooled shortcut,
the others add the identity; then ReLU. Stage pre-activation map = the sum/concatenation before that ReLU.

ShuffleNet V2 (size 1: widths 116/232/464, 3/7/3 basic blocks after one down-sampling block, then a 1x1 conv
to 1024 - BN - ReLU): basic block = split channels in half, transform the second half with 1x1 - BN - ReLU -
3x3 depthwise - BN - 1x1 - BN - ReLU, concatenate, shuffle (2 groups). Stage pre-activation map, as RepDistiller
defines it: the concatenation of the untouched half and the branch before its last ReLU, *without* the shuffle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_common import CifarBackbone, channel_shuffle, conv_bn_relu, register_architecture


class ShuffleV1Block(nn.Module):
    """ShuffleNet V1 bottleneck. ``forward`` returns (output, pre-activation)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            pre = torch.cat([out, F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)], 1)
        else:
            pre = out + x
        return F.relu(pre), pre


class CifarShuffleNetV1(CifarBackbone):
    """ShuffleNet V1 for 32x32 inputs.

    Args:
        out_planes: widths of the three stages.
        num_blocks: blocks per stage.
        groups: groups of the 1x1 convs.
        num_classes: number of logits (0: no classifier).
        in_chans: input channels.
    """

    def __init__(
        self,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_chans: int = 3,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans)
        stem_ch = 24
        self.stem = conv_bn_relu(in_chans, stem_ch, 1)
        in_planes = stem_ch
        for s, (planes, n) in enumerate(zip(out_planes, num_blocks, strict=True), start=1):
            blocks = []
            for i in range(n):
                # the first block of a stage concatenates its input, so its branch makes the difference
                branch = planes - in_planes if i == 0 else planes
                # the very first 1x1 conv (on the stem output) is not grouped
                first_groups = 1 if in_planes == stem_ch else groups
                blocks.append(ShuffleV1Block(in_planes, branch, 2 if i == 0 else 1, groups, first_groups))
                in_planes = planes
            self.add_module(f"stage{s}", nn.Sequential(*blocks))
        self._finish_init(
            out_planes[2],
            ["stem", "stage1", "stage2", "stage3"],
            [stem_ch, *out_planes],
            reductions=(1, 2, 4, 8),
        )

    def _forward_body(
        self, x: Tensor, preact: bool = False, stop_index: int | None = None
    ) -> tuple[list[Tensor], Tensor]:
        return self._forward_stages(self.stem(x), (self.stage1, self.stage2, self.stage3), preact, stop_index)

    # initialisation: PyTorch's default (the original sets none), i.e. CifarBackbone's defaults


class ShuffleV2Block(nn.Module):
    """ShuffleNet V2 basic block (stride 1). ``forward`` returns (output, RepDistiller's pre-activation)."""

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        c = int(channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = int(x.shape[1] * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        branch_pre = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([x1, F.relu(branch_pre)], 1), 2)
        return out, torch.cat([x1, branch_pre], 1)


class ShuffleV2DownBlock(nn.Module):
    """ShuffleNet V2 down-sampling block (stride 2, two branches). ``forward`` returns (output, output)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        out = channel_shuffle(torch.cat([left, right], 1), 2)
        return out, out


#: ShuffleNet V2 sizes of the RepDistiller code: (stage widths + final width, blocks per stage)
SHUFFLEV2_CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


class CifarShuffleNetV2(CifarBackbone):
    """ShuffleNet V2 for 32x32 inputs.

    Args:
        net_size: one of :data:`SHUFFLEV2_CONFIGS` (1.0 in the benchmark).
        num_classes: number of logits (0: no classifier).
        in_chans: input channels.
    """

    def __init__(self, net_size: float = 1.0, num_classes: int = 100, in_chans: int = 3) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans)
        if float(net_size) not in SHUFFLEV2_CONFIGS:
            raise ValueError(f"net_size must be one of {sorted(SHUFFLEV2_CONFIGS)}, got {net_size}.")
        widths, num_blocks = SHUFFLEV2_CONFIGS[float(net_size)]
        self.net_size = float(net_size)
        stem_ch = 24
        self.stem = conv_bn_relu(in_chans, stem_ch, 1)
        in_ch = stem_ch
        for s, (out_ch, n) in enumerate(zip(widths[:3], num_blocks, strict=True), start=1):
            blocks: list[nn.Module] = [ShuffleV2DownBlock(in_ch, out_ch)]
            blocks += [ShuffleV2Block(out_ch) for _ in range(n)]
            self.add_module(f"stage{s}", nn.Sequential(*blocks))
            in_ch = out_ch
        self.head_conv = conv_bn_relu(in_ch, widths[3], 1)
        self._finish_init(
            widths[3], ["stem", "stage1", "stage2", "stage3"], [stem_ch, *widths[:3]], reductions=(1, 2, 4, 8)
        )

    def _forward_body(
        self, x: Tensor, preact: bool = False, stop_index: int | None = None
    ) -> tuple[list[Tensor], Tensor]:
        stages = (self.stage1, self.stage2, self.stage3)
        return self._forward_stages(self.stem(x), stages, preact, stop_index, head=self.head_conv)

    # initialisation: PyTorch's default (the original sets none), i.e. CifarBackbone's defaults


_V1 = "HobbitLong/RepDistiller models/ShuffleNetv1.py (ShuffleV1)"
_V2 = "HobbitLong/RepDistiller models/ShuffleNetv2.py (ShuffleV2)"


@register_architecture("shufflenetv1", source=_V1)
def shufflenetv1(num_classes: int = 100, **kwargs) -> CifarShuffleNetV1:
    """The CRD benchmark's ShuffleV1 (groups 3, widths 240/480/960, 960-d embedding)."""
    return CifarShuffleNetV1(num_classes=num_classes, **kwargs)


@register_architecture("shufflenetv2", source=_V2)
def shufflenetv2(num_classes: int = 100, **kwargs) -> CifarShuffleNetV2:
    """The CRD benchmark's ShuffleV2 (size 1: widths 116/232/464, 1024-d embedding)."""
    return CifarShuffleNetV2(num_classes=num_classes, **kwargs)


__all__ = [
    "SHUFFLEV2_CONFIGS",
    "CifarShuffleNetV1",
    "CifarShuffleNetV2",
    "ShuffleV1Block",
    "ShuffleV2Block",
    "ShuffleV2DownBlock",
    "shufflenetv1",
    "shufflenetv2",
]
