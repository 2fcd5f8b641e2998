import itertools
import math

import numpy as np
import pytest
import torch

from hf_distill.methods import Features, FeatureSpec, StepInfo, resolve_objective
from hf_distill.methods.rkd import RKD, _angles, pairwise_distances, rkd_loss
from tests.methods._common import (
    built,
    check_gather_matches_full_batch,
    random_features,
    training_losses,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(4, dtype=torch.long))


def _huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _py_rkd(s, t):
    """RKD with plain Python loops over pairs and triplets (math only)."""
    n = len(s)

    def dist(e):
        d = [[math.dist(e[i], e[j]) for j in range(n)] for i in range(n)]
        pos = [d[i][j] for i in range(n) for j in range(n) if i != j]
        mu = sum(pos) / len(pos)
        return [[d[i][j] / mu for j in range(n)] for i in range(n)]

    def cos(j, i, k, e):  # angle at anchor j between e_i - e_j and e_k - e_j (0 for a zero vector)
        u = [a - b for a, b in zip(e[i], e[j])]
        v = [a - b for a, b in zip(e[k], e[j])]
        nu, nv = math.hypot(*u), math.hypot(*v)
        if nu == 0 or nv == 0:
            return 0.0
        return sum(a * b for a, b in zip(u, v)) / (nu * nv)

    ds, dt = dist(s), dist(t)
    loss_d = sum(_huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    trip = list(itertools.product(range(n), repeat=3))
    loss_a = sum(_huber(cos(j, i, k, s) - cos(j, i, k, t)) for j, i, k in trip) / n**3
    return loss_d, loss_a


def test_value_matches_python_loops():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 3)), 3 * rng.normal(size=(5, 4))
    d, a = rkd_loss(torch.tensor(s), torch.tensor(t))
    ed, ea = _py_rkd(s.tolist(), t.tolist())
    assert d.item() == pytest.approx(ed, rel=1e-7) and a.item() == pytest.approx(ea, rel=1e-7)
    # large discrepancies reach the linear part of the Huber loss
    s2 = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0]])
    t2 = np.array([[0.0, 0.0], [5.0, 0.0], [5.0, 5.0]])
    d2, a2 = rkd_loss(torch.tensor(s2), torch.tensor(t2))
    ed2, ea2 = _py_rkd(s2.tolist(), t2.tolist())
    assert d2.item() == pytest.approx(ed2, rel=1e-7) and a2.item() == pytest.approx(ea2, rel=1e-7)


def _explicit_angles(e):
    """RepDistiller's form: unit difference vectors (B, B, D) and their batched products, B^3 x D work."""
    diff = torch.nn.functional.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_gram_angles_equal_the_explicit_difference_vectors(offset):
    # a training-size batch in float32, also far from the origin (the Gram form centers the rows against
    # cancellation); values and gradients agree with the explicit form
    g = torch.Generator().manual_seed(0)
    e = (torch.randn(64, 576, generator=g).relu() + offset).requires_grad_(True)
    target = _explicit_angles(torch.randn(64, 512, generator=g).relu())
    got, want = _angles(e), _explicit_angles(e)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    # through the angle loss itself: its gradient is 0 at the zero-length differences (i = j or k = j), where the
    # explicit form's F.normalize would scale any other upstream gradient by 1e12
    (g_got,) = torch.autograd.grad(torch.nn.functional.smooth_l1_loss(got, target), e)
    (g_want,) = torch.autograd.grad(torch.nn.functional.smooth_l1_loss(want, target), e)
    assert g_want.abs().max() > 1e-6
    torch.testing.assert_close(g_got, g_want, rtol=1e-3, atol=1e-4 * g_want.abs().max().item())
    # coincident rows: cosine 0 wherever the difference of the pair is involved, as F.normalize of a zero vector
    dup = torch.cat([e[:3], e[:1]]).detach()
    cos = _angles(dup).reshape(4, 4, 4)
    assert cos[0, 3].abs().max() == 0 and cos[3, :, 0].abs().max() == 0
    torch.testing.assert_close(cos, _explicit_angles(dup).reshape(4, 4, 4), rtol=0, atol=2e-5)


def test_concrete_value_and_invariances():
    # same configuration up to scale and translation: both terms are 0
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    d, a = rkd_loss(s, 7 * s + 3)
    assert d.item() == pytest.approx(0.0, abs=1e-6) and a.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(pairwise_distances(s).diagonal(), torch.zeros(3))
    # three points on a line vs a right isosceles triangle: normalized distances (1, 1, 2) / (4/3) vs
    # (1, 1, sqrt2) / ((2 + sqrt2) / 3); each appears twice in the 3x3 matrix (9 entries, Huber in its square part)
    line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    tri = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # the long side joins points 0 and 2 in both
    mu_t = (2 + math.sqrt(2)) / 3
    a_diff, b_diff = 0.75 - 1 / mu_t, 1.5 - math.sqrt(2) / mu_t
    expected = (4 * 0.5 * a_diff**2 + 2 * 0.5 * b_diff**2) / 9
    assert rkd_loss(line, tri)[0].item() == pytest.approx(expected, rel=1e-5)


def test_method_terms_are_sub_weighted():
    s_spec, t_spec = FeatureSpec(names=(), embedding=(3,)), FeatureSpec(names=(), embedding=(5,))
    fs, ft = torch.randn(4, 3), torch.randn(4, 5)
    d, a = rkd_loss(fs, ft)
    out = built(RKD(), s_spec, t_spec)(Features(embedding=fs), Features(embedding=ft), STEP)
    assert set(out) == {"rkd_dist", "rkd_angle"}
    assert out["rkd_dist"].item() == pytest.approx(25 * d.item()) and out[
        "rkd_angle"
    ].item() == pytest.approx(50 * a.item())
    out = built(RKD(w_dist=1.0, w_angle=2.0), s_spec, t_spec)(
        Features(embedding=fs), Features(embedding=ft), STEP
    )
    assert out["rkd_angle"].item() == pytest.approx(2 * a.item())


def test_gradcheck_and_gradient_only_to_student():
    fs = torch.randn(5, 3, dtype=torch.double, requires_grad=True)
    ft = torch.randn(5, 4, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x: rkd_loss(x, ft)[0], (fs,))
    assert torch.autograd.gradcheck(lambda x: rkd_loss(x, ft)[1], (fs,))
    sum(rkd_loss(fs, ft)).backward()
    assert ft.grad is None
    # distances and angles do not change when the batch is translated or scaled: the gradient sums to 0 over the
    # samples and is orthogonal to the embeddings
    g = fs.grad
    torch.testing.assert_close(g.sum(0), torch.zeros(3, dtype=torch.double), rtol=0, atol=1e-12)
    assert (g * fs.detach()).sum().item() == pytest.approx(0.0, abs=1e-12)
    # coincident points (distance 0): the value is the loop reference's, and the distance term pushes the two
    # copies apart symmetrically (their difference has no direction: its cosines are 0 and pass no gradient)
    dup = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], dtype=torch.double, requires_grad=True)
    t3 = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]], dtype=torch.double)
    d, a = rkd_loss(dup, t3)
    ed, ea = _py_rkd(dup.tolist(), t3.tolist())
    # (rel 1e-5: the coincident pair's distance is sqrt(1e-12) = 1e-6, not 0, by the clamp that keeps gradients finite)
    assert d.item() == pytest.approx(ed, rel=1e-5) and a.item() == pytest.approx(ea, rel=1e-5)
    (g,) = torch.autograd.grad(d, dup)
    torch.testing.assert_close(g[0], -g[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(g.sum(0), torch.zeros(2, dtype=torch.double), rtol=0, atol=1e-6)
    assert g[0].abs().min() > 1e-3
    assert len(list(RKD().parameters())) == 0


def test_defaults_and_validation():
    spec = resolve_objective("rkd")
    assert spec.weights == (1.0,) and spec.ce_weight == 1.0
    assert RKD().hparams() == {"w_dist": 25.0, "w_angle": 50.0, "gather": False}
    with pytest.raises(ValueError, match="w_dist"):
        RKD(w_dist=-1)
    with pytest.raises(ValueError, match="not both 0"):
        RKD(w_dist=0, w_angle=0)


def test_gather_single_process_equals_local():
    s_spec, t_spec = zoo_spec("resnet20"), zoo_spec("resnet56")
    fs, ft = random_features(s_spec, 4), random_features(t_spec, 4, seed=1)
    a = built(RKD(gather=True), s_spec, t_spec)(fs, ft, STEP)
    b = built(RKD(gather=False), s_spec, t_spec)(fs, ft, STEP)
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.slow
def test_gather_two_processes_equals_full_batch():
    s_spec, t_spec = FeatureSpec(names=(), embedding=(6,)), FeatureSpec(names=(), embedding=(10,))
    check_gather_matches_full_batch(RKD, {}, s_spec, t_spec, batch=8)


def test_training_steps_decrease_the_loss(batch):
    losses = training_losses(RKD(), batch, lr=0.005, steps=4)
    assert losses[-1] < 0.7 * losses[0], losses
