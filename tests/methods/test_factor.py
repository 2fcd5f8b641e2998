"""The factor methods' shared networks: the centre-tap shortcut of ConvCoder on 1x1 maps.

Equality with the explicit 3x3 convolutions (values and gradients, float64) is tested in test_ft.py for every
coder variant; here: the shortcut is taken, and center_tap refuses convolutions it does not cover.
"""

from unittest import mock

import pytest
import torch
from torch import nn

from hf_distill.methods.factor import ConvCoder, center_tap


@pytest.mark.parametrize("transpose", [False, True])
def test_a_1x1_map_runs_no_3x3_convolution(transpose):
    coder = ConvCoder(8, 4, batch_norm=True, bias=True, transpose=transpose)
    with (
        mock.patch.object(nn.Conv2d, "_conv_forward", side_effect=AssertionError("3x3 convolution run")),
        mock.patch.object(nn.ConvTranspose2d, "forward", side_effect=AssertionError("3x3 convolution run")),
    ):
        out = coder(torch.randn(3, 8, 1, 1))
    assert out.shape == (3, 4, 1, 1)
    with pytest.raises(AssertionError, match="3x3 convolution run"):  # larger maps take the convolutions
        with mock.patch.object(nn.Conv2d, "_conv_forward", side_effect=AssertionError("3x3 convolution run")):
            ConvCoder(8, 4, batch_norm=True, bias=True)(torch.randn(3, 8, 2, 2))


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, padding=0),
        nn.Conv2d(4, 4, 2, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    ],
)
def test_center_tap_refuses_convolutions_it_does_not_cover(conv):
    with pytest.raises(ValueError, match="center_tap needs"):
        center_tap(conv, torch.randn(2, 4, 1, 1))
