"""ReviewKD: Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review" (CVPR 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .base import DataInfo, DistillationMethod, Features, FeatureSpec, MethodNeeds, StepInfo
from .dkd import WARMUP_GRANULARITIES, linear_warmup
from .maps import PairedMaps
from .registry import register_method

#: the pooled sizes of the hierarchical context loss (each level weighs half the previous one)
HCL_LEVELS = (4, 2, 1)
#: the widest fusion width (mdistiller ``MAX_MID_CHANNEL``)
MAX_MID_CHANNELS = 512


def hcl_loss(
    student_maps: list[Tensor], teacher_maps: list[Tensor], levels: tuple[int, ...] = HCL_LEVELS
) -> Tensor:
    """Hierarchical context loss, summed over the pairs.

    Per pair of (B, C, H, W) maps of equal shapes: the mean squared error at full size (weight 1) and after
    adaptive average pooling to l x l for every l in ``levels`` with l < H (weights 1/2, 1/4, 1/8, ...), divided by
    the sum of the weights used.

    Args:
        student_maps: the fused student maps.
        teacher_maps: the teacher maps, same shapes.
        levels: pooled sizes, largest first.

    Returns:
        Scalar loss.
    """
    total = student_maps[0].new_zeros(())
    for fs, ft in zip(student_maps, teacher_maps, strict=True):
        if fs.shape != ft.shape:
            raise ValueError(
                f"hcl_loss: student map {tuple(fs.shape)} and teacher map {tuple(ft.shape)} differ"
            )
        sizes = [size for size in levels if size < fs.shape[-2]]
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for ps, pt in zip(pooled_pyramid(fs, sizes), pooled_pyramid(ft, sizes)):
            weight /= 2.0
            loss = loss + weight * F.mse_loss(ps, pt)
            weights += weight
        total = total + loss / weights
    return total


def pooled_pyramid(x: Tensor, sizes: list[int]) -> list[Tensor]:
    """``[F.adaptive_avg_pool2d(x, s) for s in sizes]``, each level pooled from the previous one where both divide
    the map evenly (block means of block means are block means): one pass over the full map instead of one per level.
    """
    h, w = x.shape[-2:]
    out: list[Tensor] = []
    for size in sizes:
        prev = out[-1].shape[-1] if out else None
        even = prev is not None and h % prev == 0 and w % prev == 0 and prev % size == 0
        out.append(F.adaptive_avg_pool2d(out[-1] if even else x, size))
    return out


def attention_mix(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """ABF's fusion of a level ``x`` with the deeper levels' ``residual``.

    ``x * a0 + r * a1`` with ``r`` the residual resized to x's size (nearest) and ``(a0, a1) = sigmoid(conv1x1([x,
    r]))``, the convolution's ``weight`` (2, 2C, 1, 1) and ``bias`` (2,). :class:`_AttentionMix` computes it (same
    values, fewer passes over memory) from contiguous maps of one dtype, after resizing the residual unless x's size
    is a power-of-two multiple of it; :func:`attention_mix_autograd` otherwise (e.g. channels-last maps).
    """
    if not all(_power_of_two_factor(n, m) for n, m in zip(x.shape[-2:], residual.shape[-2:])):
        residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
    if x.is_contiguous() and residual.is_contiguous() and x.dtype == residual.dtype:
        return _AttentionMix.apply(x, residual, weight, bias)
    return attention_mix_autograd(x, residual, weight, bias)


def _power_of_two_factor(size: int, residual_size: int) -> bool:
    """Whether nearest resizing from ``residual_size`` to ``size`` repeats every pixel k = 2^n times (or one pixel
    everywhere): the blocks of :func:`_blocks`, which torch's nearest indexing (a float scale) maps exactly."""
    k, rest = divmod(size, residual_size)
    return residual_size == 1 or (rest == 0 and k & (k - 1) == 0)


def attention_mix_autograd(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """:func:`attention_mix` as the paper writes it, differentiated by autograd."""
    residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
    a = torch.sigmoid(F.conv2d(torch.cat([x, residual], dim=1), weight, bias))
    return x * a[:, :1] + residual * a[:, 1:]


def _blocks(t: Tensor, kh: int, kw: int) -> Tensor:
    """A (B, C, H, W) tensor viewed as (B, C, H / kh, kh, W / kw, kw): the kh x kw blocks of nearest upsampling."""
    b, c, h, w = t.shape
    return t.view(b, c, h // kh, kh, w // kw, kw)


def _block_sums(t: Tensor, size: tuple[int, int]) -> Tensor:
    """The sums of :func:`_blocks` of t, at the residual's ``size``: the gradient of nearest upsampling."""
    return torch.ops.aten.upsample_nearest2d_backward(t, list(t.shape[-2:]), [*t.shape[:2], *size])


def _channel_mix(weight: Tensor, x: Tensor) -> Tensor:
    """A 1x1 convolution without bias as a batched product: (O, C) with (B, C, H, W) -> (B, O, H, W)."""
    b, c = x.shape[:2]
    return torch.bmm(weight.expand(b, *weight.shape), x.view(b, c, -1)).view(b, -1, *x.shape[2:])


class _AttentionMix(torch.autograd.Function):
    """:func:`attention_mix` with its gradient written out, the residual kept at its own size (an integer fraction of
    x's: nearest upsampling is a broadcast over blocks, and the convolution commutes with it).

    Autograd's version (``cat``, the two-channel convolution, the products and the sum, the upsampled residual)
    allocates and passes over about ten tensors as large as the level per step; here the forward writes one and the
    backward two.
    """

    @staticmethod
    @torch.autocast("cuda", enabled=False)
    @torch.autocast(
        "cpu", enabled=False
    )  # computed in x's precision, as the convolution under autocast would
    def forward(ctx, x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        c, h, w = residual.shape[1:]
        kh, kw = x.shape[-2] // h, x.shape[-1] // w
        ctx.weight_shape, ctx.weight_dtype = weight.shape, weight.dtype
        weight = weight.to(x.dtype).flatten(1)  # (2, 2C): the convolution's input is [x, r]
        logits = _channel_mix(weight[:, :c], x)
        _blocks(logits, kh, kw).add_(_blocks(_channel_mix(weight[:, c:], residual), 1, 1))
        attention = torch.sigmoid(logits.add_(bias.to(x.dtype).view(1, 2, 1, 1)))
        out = x * attention[:, :1]
        _blocks(out, kh, kw).addcmul_(_blocks(residual, 1, 1), _blocks(attention[:, 1:], kh, kw))
        ctx.save_for_backward(x, residual, weight, attention)
        ctx.factors = (kh, kw)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, residual, weight, attention = ctx.saved_tensors
        kh, kw = ctx.factors
        b, c = residual.shape[:2]
        grad = grad.contiguous()
        up_residual = _blocks(residual, 1, 1)
        # d/d(a0) and d/d(a1): channel sums of grad * x and grad * r, through one reused buffer
        scratch = grad * x
        grad_a0 = scratch.sum(1, keepdim=True)
        torch.mul(_blocks(grad, kh, kw), up_residual, out=_blocks(scratch, kh, kw))
        grad_a1 = scratch.sum(1, keepdim=True)
        grad_logits = torch.cat([grad_a0, grad_a1], 1).mul_(attention * (1 - attention))
        grad_logits_low = _block_sums(grad_logits, residual.shape[-2:])
        w0, w1 = weight[:, :c], weight[:, c:]
        grad_x = grad * attention[:, :1]
        grad_x.view(b, c, -1).baddbmm_(w0.t().expand(b, c, 2), grad_logits.flatten(2))
        torch.mul(grad, attention[:, 1:], out=scratch)
        grad_r = scratch if (kh, kw) == (1, 1) else _block_sums(scratch, residual.shape[-2:])
        grad_r.view(b, c, -1).baddbmm_(w1.t().expand(b, c, 2), grad_logits_low.flatten(2))
        grad_w = torch.cat(
            [
                torch.bmm(x.view(b, c, -1), grad_logits.flatten(2).transpose(1, 2)).sum(0),
                torch.bmm(residual.view(b, c, -1), grad_logits_low.flatten(2).transpose(1, 2)).sum(0),
            ]
        ).t()
        grad_b = grad_logits.sum((0, 2, 3))
        dtype = ctx.weight_dtype
        return grad_x, grad_r, grad_w.reshape(ctx.weight_shape).to(dtype), grad_b.to(dtype)


class AttentionFusion(nn.Module):
    """ReviewKD's attention-based fusion (ABF) of one student level with the fused deeper levels.

    ``x = BN(conv1x1(f))`` (to ``mid`` channels); with a deeper residual ``r`` (resized to x's size, nearest):
    ``x = x * a0 + r * a1`` with ``(a0, a1) = sigmoid(conv1x1([x, r]))`` (two spatial attention maps); x is then
    resized to the teacher's size (nearest) if needed; the output is ``BN(conv3x3(x))`` (teacher channels) and x is
    the residual handed to the next shallower level.

    Args:
        in_channels: the student level's channels.
        mid_channels: fusion width.
        out_channels: the paired teacher level's channels.
        fuse: whether a deeper residual is fused in (all levels but the deepest).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.output = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        # applied by attention_mix; a Sequential as checkpoints name it (attention.0.weight)
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        # the reference's initialization of both convolutions
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            if residual is None:
                raise ValueError("AttentionFusion with fuse=True needs the deeper level's residual")
            conv = self.attention[0]
            x = attention_mix(x, residual, conv.weight, conv.bias)
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.output(x), x


def as_map(embedding: Tensor) -> Tensor:
    """A (B, D) penultimate vector as a (B, D, 1, 1) map (ReviewKD reviews it as the deepest level)."""
    return embedding.reshape(*embedding.shape[:2], 1, 1)


@register_method("reviewkd")
class ReviewKD(PairedMaps, DistillationMethod):
    """Knowledge review: every student level, fused with all deeper student levels, is matched to the teacher's map
    of its own level.

    Levels, shallow to deep: the paired stage maps and, with ``use_embedding``, the penultimate vectors as 1x1 maps
    (mdistiller: ``feats[1:]`` + ``pooled_feat``). The student's levels are post-activation; the teacher's maps
    pre-activation (``teacher_preact``, mdistiller's ``preact_feats``). Going from the deepest level up, an
    :class:`AttentionFusion` per level fuses the level with the residual of the deeper ones and maps it to the
    teacher level's channels and size; ``L = w(epoch) * sum_levels HCL(fused_l, T_l)`` (:func:`hcl_loss`) with
    mdistiller's linear warm-up ``w = min(epoch / warmup_epochs, 1)`` (:func:`~hf_distill.methods.dkd.linear_warmup`).

    Defaults (mdistiller ``CFG.REVIEWKD``): weight 1 (``REVIEWKD_WEIGHT``; its resnet32x4 -> resnet8x4 config uses 5,
    set by our CIFAR-100 configs), CE weight 1, warm-up 20 epochs, fusion width ``min(512, channels of the deepest
    student level)``, pooled levels 4, 2, 1. Trainable: the fusion modules. Needs convolutional maps; a teacher
    that cannot give pre-activation maps (timm, transformers) needs ``teacher_preact=false``.

    Args:
        warmup_epochs: length of the linear warm-up (0: none).
        warmup_granularity: ``"epoch"`` (mdistiller) or ``"step"``.
        use_embedding: review the penultimate vectors as the deepest level.
        teacher_preact: read the teacher's maps before their final activation.
        student_layers: student map selectors (shallow to deep).
        teacher_layers: teacher map selectors, paired in order (empty: as ``student_layers``).
    """

    summary = "student levels fused deep-to-shallow by attention, matched to the teacher's levels (knowledge review)"
    paper = "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021"
    citation = (
        "@inproceedings{chen2021distilling,\n  title={Distilling Knowledge via Knowledge Review},\n"
        "  author={Chen, Pengguang and Liu, Shu and Zhao, Hengshuang and Jia, Jiaya},\n"
        "  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n  year={2021}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0
    resize_note = "the fused student map resized (nearest) to the teacher's size"

    def __init__(
        self,
        warmup_epochs: float = 20.0,
        warmup_granularity: str = "epoch",
        use_embedding: bool = True,
        teacher_preact: bool = True,
        student_layers: str = "stages",
        teacher_layers: str = "",
    ) -> None:
        super().__init__()
        if warmup_epochs < 0:
            raise ValueError(
                f"reviewkd warmup_epochs must be >= 0 (0 disables the warm-up), got {warmup_epochs}"
            )
        if warmup_granularity not in WARMUP_GRANULARITIES:
            raise ValueError(
                f"reviewkd warmup_granularity must be one of {WARMUP_GRANULARITIES}, got {warmup_granularity!r}"
            )
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_granularity = warmup_granularity
        self.use_embedding = bool(use_embedding)
        self.teacher_preact = bool(teacher_preact)
        self.select_layers(student_layers, teacher_layers)

    def needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=self.map_needs("student", self._student_sel, preact=False, embedding=self.use_embedding),
            teacher=self.map_needs(
                "teacher", self._teacher_sel, preact=self.teacher_preact, embedding=self.use_embedding
            ),
        )

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.check_maps(student, teacher)
        s_shapes = [student.maps[n] for n in self.student_layer_names]
        t_shapes = [teacher.maps[n] for n in self.teacher_layer_names]
        if self.use_embedding:
            s_shapes.append((student.embedding[0], 1, 1))
            t_shapes.append((teacher.embedding[0], 1, 1))
        mid = min(MAX_MID_CHANNELS, s_shapes[-1][0])
        last = len(s_shapes) - 1
        self.fusions = nn.ModuleList(
            AttentionFusion(s[0], mid, t[0], fuse=i < last)
            for i, (s, t) in enumerate(zip(s_shapes, t_shapes))
        )
        self._teacher_sizes = [tuple(t[1:]) for t in t_shapes]

    def pair_connector(self, index: int) -> str:
        fusion = self.fusions[index]
        c_in, mid = fusion.reduce[0].in_channels, fusion.reduce[0].out_channels
        fuse = ", fused with the deeper levels by attention" if fusion.attention is not None else ""
        return f"attention-based fusion {c_in}->{mid}->{fusion.output[0].out_channels} (1x1 conv, 3x3 conv){fuse}"

    def levels(self, f: Features, layers: list[str]) -> list[Tensor]:
        """The levels of one network, shallow to deep."""
        maps = f.map_list(layers)
        return maps + [as_map(f.embedding)] if self.use_embedding else maps

    def review(self, student_levels: list[Tensor]) -> list[Tensor]:
        """The fused student levels, shallow to deep, each with its teacher level's channels and size."""
        out: list[Tensor] = []
        residual = None
        for i in range(len(student_levels) - 1, -1, -1):
            fused, residual = self.fusions[i](student_levels[i], residual, self._teacher_sizes[i])
            out.insert(0, fused)
        return out

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        fused = self.review(self.levels(student, self.student_layer_names))
        target = [t.detach() for t in self.levels(teacher, self.teacher_layer_names)]
        w = linear_warmup(step, self.warmup_epochs, self.warmup_granularity)
        return {"reviewkd": w * hcl_loss(fused, target)}


__all__ = [
    "AttentionFusion",
    "HCL_LEVELS",
    "ReviewKD",
    "as_map",
    "attention_mix",
    "attention_mix_autograd",
    "hcl_loss",
    "pooled_pyramid",
]
