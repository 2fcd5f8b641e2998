import math

import numpy as np
import pytest
import torch

import hf_distill.methods.nst  # noqa: F401  (registers "nst")
from hf_distill.methods import DistillationObjective, Features, FeatureSpec, StepInfo
from hf_distill.methods.maps import parse_selectors
from hf_distill.methods.nst import NST, nst_loss
from tests.methods._common import (
    built,
    cifar_teacher,
    np_block_pool,
    training_losses,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(2, dtype=torch.long))


# -- test-only helpers ------------------------------------------------------------------------------------------
def _np_nst_layer(s: np.ndarray, t: np.ndarray, degree: int = 2, c: float = 0.0) -> float:
    """Squared MMD of the normalized channel vectors, by explicit loops over samples and channel pairs."""
    size = min(s.shape[2], t.shape[2])
    s, t = np_block_pool(s, size), np_block_pool(t, size)
    total = 0.0
    for n in range(s.shape[0]):
        fs = [v / np.linalg.norm(v) for v in s[n].reshape(s.shape[1], -1)]
        ft = [v / np.linalg.norm(v) for v in t[n].reshape(t.shape[1], -1)]

        def mean_k(a, b):
            return sum((float(x @ y) + c) ** degree for x in a for y in b) / (len(a) * len(b))

        total += mean_k(ft, ft) + mean_k(fs, fs) - 2 * mean_k(fs, ft)
    return total / s.shape[0]


# -- 1. values against independent computations ------------------------------------------------------------------
def test_nst_hand_value():
    # one sample; student channels e1, e2 over two positions, teacher one channel e1 (norms already 1):
    # mean k(t,t) = 1, mean k(s,s) = (1 + 0 + 0 + 1)/4 = 0.5, mean k(s,t) = (1 + 0)/2 = 0.5 -> 1 + 0.5 - 1 = 0.5
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    t = torch.tensor([[[[3.0, 0.0]]]])  # (1, 1, 1, 2), normalized to e1
    assert nst_loss([s], [t]).item() == pytest.approx(0.5)
    # with c = 1, degree 3: k = (x.y + 1)^3 -> 8 + (8 + 1 + 1 + 8)/4 - 2 * (8 + 1)/2 = 3.5
    assert nst_loss([s], [t], degree=3, c=1.0).item() == pytest.approx(3.5)


def test_nst_matches_numpy_reference_with_pooling_and_channel_mismatch():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 6, 2, 2, generator=g)]
    t = [torch.randn(3, 7, 4, 4, generator=g), torch.randn(3, 5, 4, 4, generator=g)]
    want = sum(_np_nst_layer(a.numpy(), b.numpy()) for a, b in zip(s, t))
    assert nst_loss(s, t).item() == pytest.approx(want, rel=1e-5)
    m = built(
        NST(),
        FeatureSpec(names=("stem", "stage1", "stage2"), maps={"stage1": (4, 8, 8), "stage2": (6, 2, 2)}),
        FeatureSpec(names=("stem", "stage1", "stage2"), maps={"stage1": (7, 4, 4), "stage2": (5, 4, 4)}),
    )
    out = m(
        Features(maps={"stage1": s[0], "stage2": s[1]}), Features(maps={"stage1": t[0], "stage2": t[1]}), STEP
    )
    assert out["nst"].item() == pytest.approx(want, rel=1e-5)
    want3 = sum(_np_nst_layer(a.numpy(), b.numpy(), 3, 0.5) for a, b in zip(s, t))
    assert nst_loss(s, t, 3, 0.5).item() == pytest.approx(want3, rel=1e-5)


def _channel_pair_mmd(s, t, degree, c):
    """The (B, Cs, Ct) channel-pair form of polynomial_mmd, whatever the shapes."""

    def k(a, b):
        return (torch.bmm(a, b.transpose(1, 2)) + c).pow(degree).mean()

    return k(t, t) + k(s, s) - 2 * k(s, t)


@pytest.mark.parametrize("degree,c", [(2, 0.0), (2, 0.7), (1, 0.3)])
def test_many_channels_few_positions_uses_the_position_form_with_the_same_value_and_gradient(degree, c):
    # 40 and 24 channels over 4 positions: the (N, N) Gram form is chosen; the loop reference and the channel-pair
    # form agree with it, values and gradients
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 40, 2, 2, generator=g, dtype=torch.double, requires_grad=True)
    t = torch.randn(3, 24, 2, 2, generator=g, dtype=torch.double)
    got = nst_loss([s], [t], degree, c)
    assert got.item() == pytest.approx(_np_nst_layer(s.detach().numpy(), t.numpy(), degree, c), rel=1e-10)
    fs, ft = (torch.nn.functional.normalize(x.flatten(2), dim=2) for x in (s, t))
    want = _channel_pair_mmd(fs, ft, degree, c)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    (g_got,) = torch.autograd.grad(got, s)
    (g_want,) = torch.autograd.grad(want, s)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-12)
    assert g_want.abs().max() > 1e-6


def test_properties_zero_for_identical_and_channel_permutation_invariant():
    x = torch.randn(2, 5, 4, 4)
    assert nst_loss([x], [x]).abs().item() < 1e-6
    assert nst_loss([x], [x[:, torch.randperm(5)] * 3.0]).abs().item() < 1e-6  # scale too: normalized
    assert nst_loss([x], [torch.randn(2, 5, 4, 4)]).item() > 0


def test_defaults_and_validation():
    obj = DistillationObjective.from_names("nst")
    assert obj.weights == {"nst": 50.0} and obj.ce_weight == 1.0
    assert obj.needs().student.maps == ("stages",) and not obj.needs().student.preact
    assert obj.init_stage_methods() == []
    assert NST().init_stage is None and list(NST().parameters()) == []
    with pytest.raises(ValueError, match="degree"):
        NST(degree=0)
    with pytest.raises(ValueError, match="c must be"):
        NST(c=-1.0)
    assert parse_selectors("stage2, -1", "x") == ("stage2", -1)
    with pytest.raises(ValueError, match="selects no feature layer"):
        parse_selectors(" , ", "--nst-student-layers")


# -- 2. gradients -----------------------------------------------------------------------------------------------
def test_gradcheck_double_and_gradient_only_to_student():
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.double, requires_grad=True)]
    t = [torch.randn(2, 5, 2, 2, generator=g, dtype=torch.double)]
    assert torch.autograd.gradcheck(lambda a: nst_loss([a], t, 2, 0.0), tuple(s))
    t_raw = t[0].clone().requires_grad_(True)
    nst_loss(s, [t_raw.detach()]).backward()  # teacher features arrive detached
    assert s[0].grad is not None and s[0].grad.abs().sum() > 0 and t_raw.grad is None


# -- 3. shapes from real zoo pairs ----------------------------------------------------------------------------------


def test_layer_count_mismatch_is_a_clear_error():
    s_spec, t_spec = zoo_spec("mobilenetv2"), zoo_spec("resnet32x4")  # 4 stages vs 3
    with pytest.raises(ValueError, match="--nst-student-layers"):
        built(NST(), s_spec, t_spec)
    m = built(NST(student_layers="stage2,stage3,stage4", teacher_layers="stages"), s_spec, t_spec)
    assert m.student_layer_names == ["stage2", "stage3", "stage4"]
    assert m.teacher_layer_names == ["stage1", "stage2", "stage3"]
    # the hyperparameters are reported as given, not overwritten by the resolved layer names
    assert (
        m.hparams()["student_layers"] == "stage2,stage3,stage4" and m.hparams()["teacher_layers"] == "stages"
    )


# -- 4. a few real training steps ---------------------------------------------------------------------------------
def test_training_steps_decrease_loss(train_batch):
    # the objective would scale it by the default weight 50: step on that scale
    losses = training_losses(NST(), train_batch, 0.05, steps=8, teacher=cifar_teacher(), final=False)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
