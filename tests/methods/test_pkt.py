import numpy as np
import pytest
import torch

from hf_distill.methods import Features, FeatureSpec, StepInfo, resolve_objective
from hf_distill.methods.pkt import PKT, cosine_conditional_probs, pkt_loss
from tests.methods._common import (
    built,
    check_gather_matches_full_batch,
    random_features,
    training_losses,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(4, dtype=torch.long))
EPS = 1e-7


def _np_pkt(s, t):
    """PKT with numpy: cosine kernel (K + 1) / 2, row-normalized; mean of P_t log((P_t + eps) / (P_s + eps))."""

    def probs(f):
        u = f / (np.linalg.norm(f, axis=1, keepdims=True) + EPS)
        k = (u @ u.T + 1) / 2
        return k / k.sum(axis=1, keepdims=True)

    ps, pt = probs(s), probs(t)
    return float(np.mean(pt * np.log((pt + EPS) / (ps + EPS))))


def test_value_matches_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 8))
    assert pkt_loss(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(_np_pkt(s, t), rel=1e-9)


def test_concrete_value():
    # student: two orthogonal vectors -> kernel [[1, .5], [.5, 1]] -> rows (2/3, 1/3)
    # teacher: two opposite vectors -> kernel [[1, 0], [0, 1]] -> rows (1, 0)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.double)
    t = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.double)
    p = cosine_conditional_probs(s)
    assert torch.allclose(p, torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]], dtype=torch.double), atol=1e-6)
    # only the diagonal entries (P_t = 1) contribute, up to O(eps) terms from the eps in the norms:
    # 2 * log((1 + eps) / (2/3 + eps)) / 4
    expected = 2 * np.log((1 + EPS) / (2 / 3 + EPS)) / 4
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert pkt_loss(s, 5 * s).item() == pytest.approx(0.0, abs=1e-9)


def test_gradcheck_and_gradient_only_to_student():
    fs = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    ft = torch.randn(4, 6, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x: pkt_loss(x, ft), (fs,))
    pkt_loss(fs, ft).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0 and ft.grad is None
    # a zero feature vector stays finite
    z = torch.zeros(3, 4, requires_grad=True)
    pkt_loss(z, torch.randn(3, 2)).backward()
    assert torch.isfinite(z.grad).all()
    assert len(list(PKT().parameters())) == 0


def test_embeddings_match_the_reference():
    s_spec, t_spec = zoo_spec("shufflenetv2"), zoo_spec("resnet32x4")  # a cross-architecture pair
    m = built(PKT(), s_spec, t_spec)
    fs, ft = random_features(s_spec, 4), random_features(t_spec, 4, seed=1)
    loss = m(fs, ft, STEP)["pkt"]
    assert loss.item() == pytest.approx(
        _np_pkt(fs.embedding.double().numpy(), ft.embedding.double().numpy()), rel=1e-3
    )


def test_defaults_and_validation():
    spec = resolve_objective("pkt")
    assert spec.weights == (30000.0,) and spec.ce_weight == 1.0
    assert PKT().hparams() == {"eps": 1e-7, "gather": False}
    with pytest.raises(ValueError, match="eps"):
        PKT(eps=0)


def test_gather_single_process_equals_local():
    s_spec, t_spec = FeatureSpec(names=(), embedding=(3,)), FeatureSpec(names=(), embedding=(5,))
    fs, ft = Features(embedding=torch.randn(4, 3)), Features(embedding=torch.randn(4, 5))
    a = built(PKT(gather=True), s_spec, t_spec)(fs, ft, STEP)["pkt"]
    b = built(PKT(gather=False), s_spec, t_spec)(fs, ft, STEP)["pkt"]
    assert torch.equal(a, b)


@pytest.mark.slow
def test_gather_two_processes_equals_full_batch():
    s_spec, t_spec = FeatureSpec(names=(), embedding=(6,)), FeatureSpec(names=(), embedding=(10,))
    check_gather_matches_full_batch(PKT, {}, s_spec, t_spec, batch=8, rtol=1e-4, atol=1e-9)


def test_training_steps_decrease_the_loss(batch):
    losses = training_losses(PKT(), batch, lr=0.01)
    assert losses[-1] < 0.5 * losses[0], losses
