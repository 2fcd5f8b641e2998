import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_distill.methods import Features, FeatureSpec, StepInfo, resolve_objective
from hf_distill.methods.vid import VID, VIDHead, vid_nll
from tests.methods._common import built, random_features, training_losses, zoo_spec

STEP = StepInfo(labels=torch.zeros(2, dtype=torch.long))


def _np_head(head, fs):
    """The regressor with numpy: three 1x1 convs (channel matmuls, no bias) with ReLUs between."""
    ws = [c.weight.detach().double().numpy()[:, :, 0, 0] for c in head.regressor if isinstance(c, nn.Conv2d)]
    x = np.einsum("oc,bchw->bohw", ws[0], fs)
    x = np.einsum("oc,bchw->bohw", ws[1], np.maximum(x, 0))
    return np.einsum("oc,bchw->bohw", ws[2], np.maximum(x, 0))


def test_nll_matches_numpy():
    rng = np.random.default_rng(0)
    mu, t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))
    var = np.array([0.5, 1.0, 3.0])
    v = var[None, :, None, None]
    expected = float(np.mean(0.5 * ((t - mu) ** 2 / v + np.log(v))))
    got = vid_nll(torch.tensor(mu), torch.tensor(t), torch.tensor(var))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # concrete: mu = t, var = e -> 0.5 * log e = 0.5
    assert vid_nll(
        torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.tensor([math.e])
    ).item() == pytest.approx(0.5)


def test_head_structure_and_initial_variance():
    head = VIDHead(3, 7, 7, init_pred_var=5.0, eps=1e-5)
    convs = [c for c in head.regressor if isinstance(c, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 7), (7, 7), (7, 7)]
    assert all(c.kernel_size == (1, 1) and c.bias is None for c in convs)
    assert [type(c) for c in head.regressor].count(nn.ReLU) == 2
    assert torch.allclose(head.variance(), torch.full((7,), 5.0), atol=1e-6)
    # log_scale = log(exp(5 - eps) - 1), the reference initialization
    assert head.log_scale[0].item() == pytest.approx(math.log(math.exp(5.0 - 1e-5) - 1.0), rel=1e-6)


def test_method_value_matches_numpy_with_pooling_and_layer_sum():
    s_spec = FeatureSpec(names=("stem", "a", "b"), maps={"a": (2, 4, 4), "b": (3, 2, 2)})
    t_spec = FeatureSpec(names=("stem", "a", "b"), maps={"a": (3, 2, 2), "b": (4, 2, 2)})
    m = built(VID(), s_spec, t_spec).double()
    fs = random_features(s_spec, 2)
    ft = random_features(t_spec, 2, seed=1)
    fs = Features(maps={k: v.double() for k, v in fs.maps.items()})
    ft = Features(maps={k: v.double() for k, v in ft.maps.items()})
    total = 0.0
    for head, name in zip(m.heads, ["a", "b"]):
        x = fs.maps[name].numpy()
        if name == "a":  # student 4x4 vs teacher 2x2: average 2x2 blocks
            x = x.reshape(2, 2, 2, 2, 2, 2).mean(axis=(3, 5))
        mu = _np_head(head, x)
        v = head.variance().detach().numpy()[None, :, None, None]
        total += np.mean(0.5 * ((ft.maps[name].numpy() - mu) ** 2 / v + np.log(v)))
    got = m(fs, ft, STEP)["vid"]
    assert got.item() == pytest.approx(total, rel=1e-10)
    m2 = built(VID(layer_reduction="mean"), s_spec, t_spec).double()
    m2.load_state_dict(m.state_dict())
    assert m2(fs, ft, STEP)["vid"].item() == pytest.approx(total / 2, rel=1e-10)


def test_gradients_reach_student_regressor_and_variance_not_teacher():
    s_spec = FeatureSpec(names=("stem", "a"), maps={"a": (2, 2, 2)})
    t_spec = FeatureSpec(names=("stem", "a"), maps={"a": (3, 2, 2)})
    m = built(VID(), s_spec, t_spec).double()
    fs = torch.rand(2, 2, 2, 2, dtype=torch.double, requires_grad=True)
    ft = torch.rand(2, 3, 2, 2, dtype=torch.double)

    def f(x, log_scale):
        m.heads[0].log_scale.data.copy_(log_scale.detach())
        head = m.heads[0]
        var = torch.nn.functional.softplus(log_scale) + head.eps
        return vid_nll(head.regressor(x), ft, var)

    ls = (m.heads[0].log_scale.detach().clone() * 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (fs, ls))
    m.zero_grad()
    m(Features(maps={"a": fs}), Features(maps={"a": ft}), STEP)["vid"].backward()
    assert fs.grad is not None and ft.grad is None
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_heads_map_student_channels_to_the_teachers():
    s_spec, t_spec = zoo_spec("shufflenetv2"), zoo_spec("resnet32x4")  # a cross-architecture pair
    m = built(VID(), s_spec, t_spec)
    assert len(m.heads) == len(s_spec.names) - 1
    for head, sn, tn in zip(m.heads, m.student_layer_names, m.teacher_layer_names):
        assert head.regressor[0].in_channels == s_spec.maps[sn][0]
        assert head.regressor[-1].out_channels == t_spec.maps[tn][0] == head.log_scale.numel()
    loss = m(random_features(s_spec, 2), random_features(t_spec, 2, seed=1), STEP)["vid"]
    assert torch.isfinite(loss)


def test_errors_and_defaults():
    with pytest.raises(ValueError, match="--vid-student-layers / --vid-teacher-layers"):
        built(VID(), zoo_spec("resnet20"), zoo_spec("vgg13"))
    tokens = FeatureSpec(names=("h0", "h1"), maps={"h1": (5, 8)})
    with pytest.raises(ValueError, match=r"convolutional \(C, H, W\)"):
        built(VID(), tokens, tokens)
    with pytest.raises(ValueError, match="init_pred_var"):
        VID(init_pred_var=0.0)
    spec = resolve_objective("vid")
    assert spec.weights == (1.0,) and spec.ce_weight == 1.0
    assert VID().hparams() == {
        "student_layers": "stages",
        "teacher_layers": "",
        "init_pred_var": 5.0,
        "eps": 1e-5,
        "layer_reduction": "sum",
    }


def test_training_steps_decrease_the_loss(batch):
    # the loss starts dominated by 0.5 * log(init variance 5) per map and the variance shrinks slowly: expect a
    # steady (monotone) decrease rather than a large one over a few steps
    losses = training_losses(VID(), batch, lr=0.1)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
