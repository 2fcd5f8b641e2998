"""CIFAR model zoo: architecture facts, the backbone contract, timm registration."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import hf_distill.models.timm_cifar  # noqa: F401  (registers the cifar_* models with timm)
from hf_distill.models.cifar_common import (
    CIFAR100_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CifarBackbone,
    channel_shuffle,
    count_parameters,
    get_architecture,
)
from hf_distill.models.modeling_cifar import CIFAR_ARCHITECTURES

# Parameter counts measured by running the reference implementations (not part of this repository):
# HobbitLong/RepDistiller models/*.py built with num_classes=100 (its model_dict: 'vgg8' -> vgg8_bn, ...,
# 'MobileNetV2' -> mobile_half, 'ShuffleV1', 'ShuffleV2'), and akamaster/pytorch_resnet_cifar10 resnet.py
# (10 classes; its README: resnet20 0.27M, resnet32 0.46M, resnet44 0.66M, resnet56 0.85M, resnet110 1.7M).
REFERENCE_PARAMS_100 = {
    "resnet8": 83892,
    "resnet14": 181108,
    "resnet20": 278324,
    "resnet32": 472756,
    "resnet44": 667188,
    "resnet56": 861620,
    "resnet110": 1736564,
    "resnet8x4": 1233540,
    "resnet32x4": 7433860,
    "wrn_16_1": 180916,
    "wrn_16_2": 703284,
    "wrn_40_1": 569780,
    "wrn_40_2": 2255156,
    "vgg8": 3965028,
    "vgg11": 9277284,
    "vgg13": 9462180,
    "vgg16": 14774436,
    "vgg19": 20086692,
    "mobilenetv2": 812836,
    "shufflenetv1": 949258,
    "shufflenetv2": 1355528,
}
REFERENCE_PARAMS_10 = {
    "resnet20_a": 269722,
    "resnet32_a": 464154,
    "resnet44_a": 658586,
    "resnet56_a": 853018,
    "resnet110_a": 1727962,
}

# Feature map shapes (C, H, W) for a 32x32 input, measured with RepDistiller's is_feat=True (feat[:-1]);
# the option-A ResNets have the same stages as RepDistiller's resnet20.
_R16 = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
_R64 = [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]
_W1 = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
_W2 = [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)]
_VGG = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]
REFERENCE_MAPS = {
    **{n: _R16 for n in ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]},
    **{f"resnet{d}_a": _R16 for d in (20, 32, 44, 56, 110)},
    "resnet8x4": _R64,
    "resnet32x4": _R64,
    "wrn_16_1": _W1,
    "wrn_40_1": _W1,
    "wrn_16_2": _W2,
    "wrn_40_2": _W2,
    **{n: _VGG for n in ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]},
    "mobilenetv2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],
    "shufflenetv1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)],
    "shufflenetv2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)],
}
REFERENCE_EMBEDDING = {
    **{n: 64 for n in REFERENCE_MAPS if n.startswith("resnet") and "x4" not in n},
    "resnet8x4": 256,
    "resnet32x4": 256,
    "wrn_16_1": 64,
    "wrn_40_1": 64,
    "wrn_16_2": 128,
    "wrn_40_2": 128,
    **{n: 512 for n in ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]},
    "mobilenetv2": 1280,
    "shufflenetv1": 960,
    "shufflenetv2": 1024,
}

ALL = list(REFERENCE_PARAMS_100) + list(REFERENCE_PARAMS_10)

# how a stage's post-activation map relates to its pre-activation map
RELU_OF_PREACT = {
    n for n in ALL if n.startswith(("resnet", "vgg")) or n == "shufflenetv1"
}  # post = relu(pre)
# all post-activation maps are >= 0 (the stem too)
NONNEGATIVE = RELU_OF_PREACT | {"shufflenetv2"}

_CACHE: dict[str, CifarBackbone] = {}


def _model(name: str) -> CifarBackbone:
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = CIFAR_ARCHITECTURES[name]().eval()
    return _CACHE[name]


def test_registry_has_every_architecture() -> None:
    assert sorted(CIFAR_ARCHITECTURES) == sorted(ALL)
    assert len(ALL) == 26


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid names are: .*resnet56.*wrn_40_2"):
        get_architecture("resnet57")
    assert get_architecture("cifar_resnet56") is CIFAR_ARCHITECTURES["resnet56"]


@pytest.mark.parametrize("name", ALL)
def test_parameter_count_matches_reference(name: str) -> None:
    if name in REFERENCE_PARAMS_100:
        assert count_parameters(CIFAR_ARCHITECTURES[name](num_classes=100)) == REFERENCE_PARAMS_100[name]
    else:
        assert count_parameters(CIFAR_ARCHITECTURES[name](num_classes=10)) == REFERENCE_PARAMS_10[name]


@pytest.mark.parametrize("name", ALL)
def test_forward_taps_contract(name: str, images: torch.Tensor) -> None:
    model = _model(name)
    with torch.no_grad():
        maps, emb, logits = model.forward_taps(images)
        plain = model(images)
    assert list(maps) == model.feature_names
    assert model.feature_names[0] == "stem"
    assert model.feature_names[1:] == [f"stage{i}" for i in range(1, len(model.feature_names))]
    assert [tuple(m.shape[1:]) for m in maps.values()] == REFERENCE_MAPS[name]
    assert all(m.shape[0] == 2 for m in maps.values())
    assert model.num_features == REFERENCE_EMBEDDING[name] and emb.shape == (2, model.num_features)
    assert logits.shape == (2, model.num_classes)
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
    # feature_info agrees with the maps
    assert [fi["module"] for fi in model.feature_info] == model.feature_names
    assert [fi["num_chs"] for fi in model.feature_info] == [m.shape[1] for m in maps.values()]
    assert [fi["reduction"] for fi in model.feature_info] == [32 // m.shape[-1] for m in maps.values()]


@pytest.mark.parametrize("name", ALL)
def test_preact_maps(name: str, images: torch.Tensor) -> None:
    model = _model(name)
    with torch.no_grad():
        post, emb, logits = model.forward_taps(images, preact=False)
        pre, emb_p, logits_p = model.forward_taps(images, preact=True)
    torch.testing.assert_close(logits, logits_p, rtol=0, atol=0)
    torch.testing.assert_close(emb, emb_p, rtol=0, atol=0)
    torch.testing.assert_close(pre["stem"], post["stem"], rtol=0, atol=0)
    for key in model.feature_names[1:]:
        assert pre[key].shape == post[key].shape
        if name == "mobilenetv2":  # linear bottlenecks: no final ReLU
            torch.testing.assert_close(pre[key], post[key], rtol=0, atol=0)
            continue
        assert not torch.equal(pre[key], post[key]), key
        assert pre[key].min() < 0, key
        if name in RELU_OF_PREACT:
            torch.testing.assert_close(post[key], F.relu(pre[key]), rtol=0, atol=0)
        elif name == "shufflenetv2":  # RepDistiller's pre-activation is taken before the channel shuffle
            torch.testing.assert_close(post[key], channel_shuffle(F.relu(pre[key]), 2), rtol=0, atol=0)
    if name in NONNEGATIVE:
        assert all(m.min() >= 0 for m in post.values())
    elif name == "mobilenetv2":
        assert post["stem"].min() >= 0 and any(m.min() < 0 for m in post.values())
    else:  # Wide ResNets: the maps are the conv stem and raw residual sums; preact = the following BN
        assert name.startswith("wrn") and all(m.min() < 0 for m in post.values())


@pytest.mark.parametrize(
    "name", ["resnet20", "resnet56_a", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv2"]
)
@pytest.mark.parametrize("preact", [False, True])
def test_forward_taps_is_one_pass(name: str, preact: bool, images: torch.Tensor) -> None:
    model = CIFAR_ARCHITECTURES[name]().train()
    model.forward_taps(images, preact=preact)
    counts = {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert counts == {1}  # every BN ran exactly once


@pytest.mark.parametrize("name", ALL)
def test_timm_style_api(name: str, images: torch.Tensor) -> None:
    model = _model(name)
    with torch.no_grad():
        maps, emb, logits = model.forward_taps(images)
        feats = model.forward_features(images)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), emb, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(feats), logits, rtol=0, atol=0)
        final, inter = model.forward_intermediates(images)
        last2 = model.forward_intermediates(images, indices=2, intermediates_only=True)
        early = model.forward_intermediates(images, indices=[0, -3], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(final, feats, rtol=0, atol=0)
    assert len(inter) == len(maps)
    for a, b in zip(inter, maps.values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    names = model.feature_names
    torch.testing.assert_close(last2[0], maps[names[-2]], rtol=0, atol=0)
    torch.testing.assert_close(last2[1], maps[names[-1]], rtol=0, atol=0)
    torch.testing.assert_close(early[1], maps[names[-3]], rtol=0, atol=0)
    assert feats.shape[1] == model.num_features
    assert model.get_classifier() is model.fc
    cfg = model.pretrained_cfg
    assert cfg is model.default_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["classifier"] == "fc"
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    if name.endswith("_a"):
        assert (cfg["mean"], cfg["std"], cfg["num_classes"]) == (IMAGENET_MEAN, IMAGENET_STD, 10)
    else:
        assert (cfg["mean"], cfg["num_classes"]) == (CIFAR100_MEAN, 100)


def test_forward_intermediates_rejects_bad_indices(images: torch.Tensor) -> None:
    model = _model("resnet20")
    with pytest.raises(ValueError):
        model.forward_intermediates(images, indices=[4])
    with pytest.raises(ValueError):
        model.forward_intermediates(images, indices=5)


def test_reset_classifier_and_headless(images: torch.Tensor) -> None:
    model = CIFAR_ARCHITECTURES["wrn_16_1"](num_classes=100).eval()
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(images).shape == (2, 7)
    assert torch.all(model.fc.bias == 0)  # the WRN init zeroes Linear biases
    model.reset_classifier(0)
    assert model(images).shape == (2, model.num_features)
    headless = CIFAR_ARCHITECTURES["resnet8"](num_classes=0)
    assert headless.forward_taps(images)[2].shape == (2, 64)


def test_original_initialisation() -> None:
    torch.manual_seed(0)
    vgg = CIFAR_ARCHITECTURES["vgg8"]()
    assert abs(vgg.fc.weight.std().item() - 0.01) < 1e-3 and torch.all(vgg.fc.bias == 0)
    w = vgg.stage3[0].weight  # Normal(0, sqrt(2 / (3*3*out_channels)))
    assert abs(w.std().item() / (2 / (9 * 512)) ** 0.5 - 1) < 0.05
    res = CIFAR_ARCHITECTURES["resnet56"]()  # Kaiming normal, fan_out
    w = res.stage3[0].conv2.weight
    assert abs(w.std().item() / (2 / (9 * 64)) ** 0.5 - 1) < 0.05
    aka = CIFAR_ARCHITECTURES["resnet56_a"]()  # Kaiming normal, fan_in (on the Linear too)
    assert abs(aka.fc.weight.std().item() / (2 / 64) ** 0.5 - 1) < 0.15


def test_option_a_shortcut_has_no_weights() -> None:
    model = CIFAR_ARCHITECTURES["resnet20_a"]()
    assert not any("shortcut" in k for k in model.state_dict())
    block = model.stage2[0]
    x = torch.randn(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


# ---------------------------------------------------------------------------------------------- timm


def test_timm_lists_every_architecture() -> None:
    assert sorted(timm.list_models("cifar_*")) == sorted(f"cifar_{n}" for n in ALL)


@pytest.mark.parametrize("name", ALL)
def test_timm_create_model(name: str, images: torch.Tensor) -> None:
    model = timm.create_model(f"cifar_{name}", num_classes=7)
    assert isinstance(model, CifarBackbone)
    assert model.num_classes == 7
    with torch.no_grad():
        assert model.eval()(images).shape == (2, 7)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert model.pretrained_cfg["num_classes"] == (10 if name.endswith("_a") else 100)
    assert model.pretrained_cfg["mean"] == (IMAGENET_MEAN if name.endswith("_a") else CIFAR100_MEAN)
    assert timm.get_pretrained_cfg(f"cifar_{name}").num_classes == (10 if name.endswith("_a") else 100)


@pytest.mark.parametrize(("name", "num_classes"), [("resnet56_a", 10), ("resnet8", 100)])
def test_timm_default_num_classes(name: str, num_classes: int) -> None:
    assert timm.create_model(f"cifar_{name}").num_classes == num_classes


@pytest.mark.parametrize("name", ["resnet32x4", "wrn_40_2", "vgg13", "mobilenetv2", "shufflenetv1"])
def test_timm_features_only(name: str, images: torch.Tensor) -> None:
    model = _model(name)
    with torch.no_grad():
        maps = list(model.forward_taps(images)[0].values())
    net = timm.create_model(f"cifar_{name}", features_only=True)
    net.model.load_state_dict(model.state_dict(), strict=False)  # the classifier was pruned
    net.eval()
    with torch.no_grad():
        out = net(images)
    assert net.feature_info.channels() == [m.shape[1] for m in maps]
    assert len(out) == len(maps)
    for a, b in zip(out, maps):
        torch.testing.assert_close(a, b)
    sub = timm.create_model(f"cifar_{name}", features_only=True, out_indices=(1, -1))
    assert sub.feature_info.channels() == [maps[1].shape[1], maps[-1].shape[1]]
    with torch.no_grad():
        assert [o.shape for o in sub.eval()(images)] == [maps[1].shape, maps[-1].shape]
