"""Shared building blocks of the auto-encoder ("factor") methods: FT and IE-KD.

Both methods compress a feature map into a smaller "factor" map with a stack of 3x3 convolutions, train a
teacher-side auto-encoder in an initialization stage, freeze it, and then compare factors. This module holds the
pieces they share:

* :class:`ConvCoder`: the three-convolution stack (RepDistiller's Paraphraser/Translator halves and the IE-KD
  reference's ``Coder`` differ only in flags: leading activation, batch norm, conv bias, transposed convs, init);
* :class:`AutoEncoder`: encoder + decoder with a checkpointed ``frozen`` flag; once frozen it stays in eval mode
  (the trainer calls ``.train()`` on the whole container every step), receives no gradients, stays out of the main
  optimizer, and a checkpoint load re-applies the freeze (so a resumed run does not train it again);
* :func:`mean_pnorm`: ``(mean |x|^p)^(1/p)``, the IE-KD reconstruction loss and factor distance.

The map helpers they share with the other map-based methods (layer selection, the convolutional-map check, pooling
to a common spatial size) are in :mod:`hf_distill.methods.maps`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["AutoEncoder", "ConvCoder", "center_tap", "mean_pnorm"]


class ConvCoder(nn.Sequential):
    """Three 3x3 stride-1 convolutions ``cin -> cin -> cout -> cout``, each followed by (BN and) LeakyReLU(0.1).

    The spatial size is kept (padding 1). Variants:

    * RepDistiller Paraphraser encoder: ``batch_norm=False, bias=True``; its decoder adds ``transpose=True``;
    * RepDistiller Translator: ``batch_norm=True, bias=True``;
    * IE-KD reference ``Coder``: ``leading_activation=True, batch_norm=True, bias=False, he_init=True``.

    Args:
        in_channels: channels of the input map.
        out_channels: channels of the output map.
        batch_norm: a BatchNorm2d after every convolution.
        bias: convolutions with a bias.
        transpose: ``ConvTranspose2d`` instead of ``Conv2d`` (RepDistiller's Paraphraser decoder).
        leading_activation: a LeakyReLU(0.1) before the first convolution (IE-KD reference).
        he_init: convolution weights ~ N(0, 2 / (k*k*out_channels)), BN weight 1 / bias 0 (IE-KD reference);
            otherwise PyTorch's default init (RepDistiller).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        batch_norm: bool,
        bias: bool,
        transpose: bool = False,
        leading_activation: bool = False,
        he_init: bool = False,
    ) -> None:
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"ConvCoder needs positive channel counts, got {in_channels} -> {out_channels}")
        conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
        layers: list[nn.Module] = [nn.LeakyReLU(0.1)] if leading_activation else []
        for cin, cout in (
            (in_channels, in_channels),
            (in_channels, out_channels),
            (out_channels, out_channels),
        ):
            layers.append(conv_cls(cin, cout, kernel_size=3, stride=1, padding=1, bias=bias))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            # not in-place: with leading_activation the first LeakyReLU sees the (teacher's) input map itself
            layers.append(nn.LeakyReLU(0.1))
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels
        if he_init:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (1, 1):
            return super().forward(x)
        # A 1x1 map (a 32x32 input through a timm network): each padded 3x3 convolution reads only its centre tap,
        # the other eight meet the zero padding, so it is a matrix product with that tap, 1/9 of the multiply-adds.
        # Values equal the convolution's up to summation order; the other taps' gradients are zero either way.
        for layer in self:
            x = center_tap(layer, x) if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) else layer(x)
        return x


def center_tap(conv: nn.Conv2d | nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a (B, C, 1, 1) ``x`` and a stride-1 convolution padded to keep the size: its centre tap alone.

    Args:
        conv: a ``Conv2d`` or ``ConvTranspose2d`` with odd kernel sizes, ``padding = kernel_size // 2``, stride 1,
            dilation 1 and one group (as :class:`ConvCoder` builds them).
        x: (B, C_in, 1, 1).

    Returns:
        (B, C_out, 1, 1), equal to ``conv(x)``.
    """
    kh, kw = conv.kernel_size
    if (
        conv.stride != (1, 1)
        or conv.dilation != (1, 1)
        or conv.groups != 1
        or conv.padding != (kh // 2, kw // 2)
        or kh % 2 == 0
        or kw % 2 == 0
        or conv.padding_mode != "zeros"
        or tuple(getattr(conv, "output_padding", (0, 0))) != (0, 0)
    ):
        raise ValueError(
            f"center_tap needs a stride-1, size-keeping convolution with odd kernels, got {conv}"
        )
    tap = conv.weight[:, :, kh // 2, kw // 2]  # Conv2d: (out, in); ConvTranspose2d: (in, out)
    if isinstance(conv, nn.ConvTranspose2d):
        tap = tap.t()
    return nn.functional.linear(x.flatten(1), tap, conv.bias)[:, :, None, None]


def _refreeze_after_load(module: nn.Module, incompatible_keys) -> None:
    # A module-level function (not a lambda) so that the module stays picklable/deep-copyable.
    if bool(module.frozen):
        module.freeze()


class AutoEncoder(nn.Module):
    """An encoder/decoder pair trained in an initialization stage, then frozen.

    ``forward(x)`` returns ``(factor, reconstruction)``; :meth:`encode` only the factor. The boolean buffer
    ``frozen`` travels in every checkpoint (``distill_state.safetensors``); loading a state with ``frozen=True``
    re-applies :meth:`freeze` (no gradients, eval mode), so a resumed run keeps the auto-encoder fixed and the main
    optimizer (built after the checkpoint is loaded) does not include it.

    Args:
        encoder: input map -> factor map.
        decoder: factor map -> reconstruction of the input map.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.register_load_state_dict_post_hook(_refreeze_after_load)

    def encode(self, x: Tensor) -> Tensor:
        """The factor map of ``x``."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(factor, reconstruction)`` of ``x``."""
        factor = self.encoder(x)
        return factor, self.decoder(factor)

    def freeze(self) -> None:
        """Stop training this auto-encoder for good: no gradients, eval mode (BN statistics fixed)."""
        self.frozen.fill_(True)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> AutoEncoder:
        """Like ``nn.Module.train``, but a frozen auto-encoder stays in eval mode."""
        return super().train(mode and not bool(self.frozen))


def mean_pnorm(diff: Tensor, p: float = 1.0) -> Tensor:
    """``(mean over all elements of |diff|^p)^(1/p)`` (the IE-KD reference's RecLoss and factor distance).

    For p > 1 the mean is clamped away from zero before the root, whose gradient is infinite at 0.

    Args:
        diff: any tensor.
        p: the norm's order (> 0).

    Returns:
        Scalar.
    """
    if p == 1:
        return diff.abs().mean()
    m = diff.abs().pow(p).mean()
    if p > 1:
        m = m.clamp_min(torch.finfo(m.dtype).tiny)
    return m.pow(1.0 / p)
