import numpy as np
import pytest
import torch

from hf_distill.methods import Features, FeatureSpec, StepInfo, resolve_objective
from hf_distill.methods.cc import CC, cc_loss
from tests.methods._common import (
    built,
    check_gather_matches_full_batch,
    random_features,
    training_losses,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(4, dtype=torch.long))


def _np_cc(es, et):
    """RepDistiller's Correlation with explicit loops: mean over consecutive pairs of <|d_i|, |d_{i+1}|>."""
    d = np.abs(es - et)
    return float(np.mean([sum(d[i, k] * d[i + 1, k] for k in range(d.shape[1])) for i in range(len(d) - 1)]))


def test_value_matches_numpy():
    rng = np.random.default_rng(0)
    es, et = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    assert cc_loss(torch.tensor(es), torch.tensor(et)).item() == pytest.approx(_np_cc(es, et), rel=1e-12)


def test_concrete_value():
    # |delta| rows: (1, 0), (1, 2), (0, 3) -> pair products 1 and 6 -> mean 3.5
    es = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, -3.0]])
    et = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    assert cc_loss(es, et).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="at least 2"):
        cc_loss(es[:1], et[:1])


def test_method_embeds_both_sides_linearly():
    s_spec = FeatureSpec(names=(), embedding=(6,))
    t_spec = FeatureSpec(names=(), embedding=(9,))
    m = built(CC(), s_spec, t_spec)
    assert m.embed_s.weight.shape == (128, 6) and m.embed_t.weight.shape == (128, 9)
    fs, ft = torch.randn(4, 6), torch.randn(4, 9)
    got = m(Features(embedding=fs), Features(embedding=ft), STEP)["cc"]
    ws, bs = m.embed_s.weight.detach().numpy(), m.embed_s.bias.detach().numpy()
    wt, bt = m.embed_t.weight.detach().numpy(), m.embed_t.bias.detach().numpy()
    expected = _np_cc(fs.numpy() @ ws.T + bs, ft.numpy() @ wt.T + bt)
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_gradients_reach_student_and_both_embeddings_not_teacher():
    s_spec, t_spec = FeatureSpec(names=(), embedding=(3,)), FeatureSpec(names=(), embedding=(5,))
    m = built(CC(feat_dim=4), s_spec, t_spec).double()
    fs = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    ft = torch.randn(4, 5, dtype=torch.double)

    def f(x):
        return m(Features(embedding=x), Features(embedding=ft), STEP)["cc"]

    assert torch.autograd.gradcheck(f, (fs,))
    f(fs).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0 and ft.grad is None
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_defaults_and_validation():
    spec = resolve_objective("cc")
    assert spec.weights == (0.02,) and spec.ce_weight == 1.0
    assert CC().hparams() == {"feat_dim": 128, "gather": False}
    with pytest.raises(ValueError, match="feat_dim"):
        CC(feat_dim=0)


def test_gather_single_process_equals_local():
    s_spec, t_spec = zoo_spec("resnet20"), zoo_spec("resnet56")
    fs, ft = random_features(s_spec, 4), random_features(t_spec, 4, seed=1)
    torch.manual_seed(0)
    a = built(CC(gather=True), s_spec, t_spec)
    torch.manual_seed(0)
    b = built(CC(gather=False), s_spec, t_spec)
    assert torch.equal(a(fs, ft, STEP)["cc"], b(fs, ft, STEP)["cc"])


@pytest.mark.slow
def test_gather_two_processes_equals_full_batch():
    s_spec, t_spec = FeatureSpec(names=(), embedding=(6,)), FeatureSpec(names=(), embedding=(10,))
    check_gather_matches_full_batch(CC, {"feat_dim": 8}, s_spec, t_spec, batch=8)


def test_training_steps_decrease_the_loss(batch):
    losses = training_losses(CC(), batch, lr=0.01)
    assert losses[-1] < 0.5 * losses[0], losses
