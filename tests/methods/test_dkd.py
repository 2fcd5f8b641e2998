import math

import pytest
import torch

from hf_distill.methods import DistillationObjective, Features, StepInfo
from hf_distill.methods.dkd import DKD, dkd_loss, linear_warmup
from tests.methods._common import cifar_teacher, training_losses


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _dkd_by_hand(s, t, y, T):
    """The published DKD (Zhao et al., Eq. 1-4) with math only: binary and non-target KLs, each * T^2, batch mean."""
    tckd = nckd = 0.0
    for zs, zt, g in zip(s, t, y):
        ps, pt = _softmax(zs, T), _softmax(zt, T)
        tckd += _kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]])
        # non-target distribution: p_j / (1 - p_gt) over j != gt
        qs = [p / (1 - ps[g]) for j, p in enumerate(ps) if j != g]
        qt = [p / (1 - pt[g]) for j, p in enumerate(pt) if j != g]
        nckd += _kl(qt, qs)
    n = len(y)
    return T * T * tckd / n, T * T * nckd / n


def _mdistiller_style(s, t, y, T, alpha, beta):
    """mdistiller's formulation in plain torch: masked sums, log of the sum, and the -1000 * gt_mask trick."""
    gt = torch.zeros_like(s).scatter_(1, y.unsqueeze(1), 1.0)
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = torch.nn.functional.kl_div(torch.log(bs), bt, reduction="sum") * T**2 / s.shape[0]
    log_qs = torch.log_softmax(s / T - 1000.0 * gt, 1)
    qt = torch.softmax(t / T - 1000.0 * gt, 1)
    nckd = torch.nn.functional.kl_div(log_qs, qt, reduction="sum") * T**2 / s.shape[0]
    return alpha * tckd + beta * nckd


def test_dkd_matches_hand_computation():
    s = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.5]]
    t = [[2.0, 1.0, 0.0, 0.3], [1.0, 1.0, 1.0, -2.0]]
    y = [0, 2]
    T = 2.0
    tckd, nckd = dkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), T)
    e_t, e_n = _dkd_by_hand(s, t, y, T)
    assert tckd.item() == pytest.approx(e_t, rel=1e-5)
    assert nckd.item() == pytest.approx(e_n, rel=1e-5)


def test_dkd_method_matches_mdistiller_formulation_with_warmup():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10) * 3, torch.randn(8, 10) * 3
    y = torch.randint(0, 10, (8,))
    m = DKD()  # alpha 1, beta 8, T 4, warm-up 20
    for epoch, factor in ((0.0, 1 / 20), (0.6, 1 / 20), (1.0, 2 / 20), (19.0, 1.0), (57.3, 1.0)):
        out = m(Features(logits=s), Features(logits=t), StepInfo(labels=y, epoch=epoch))
        assert set(out) == {"dkd_tckd", "dkd_nckd"}
        expected = factor * _mdistiller_style(s, t, y, 4.0, 1.0, 8.0)
        assert sum(out.values()).item() == pytest.approx(expected.item(), rel=1e-5)


def test_linear_warmup_mapping():
    def w(epoch, epochs=20.0, g="epoch"):
        return linear_warmup(StepInfo(labels=torch.zeros(1, dtype=torch.long), epoch=epoch), epochs, g)

    # mdistiller counts epochs from 1: the whole first epoch uses 1/warmup
    assert w(0.0) == pytest.approx(0.05) and w(0.999) == pytest.approx(0.05)
    assert (
        w(1.0) == pytest.approx(0.10) and w(18.5) == pytest.approx(0.95) and w(19.0) == 1.0 and w(300) == 1.0
    )
    assert w(0.9999999999) == pytest.approx(0.10)  # an epoch boundary reported with rounding error
    # per-step ramp: equals the per-epoch value at each epoch start, linear in between
    assert w(0.0, g="step") == pytest.approx(0.05) and w(0.5, g="step") == pytest.approx(0.075)
    assert w(3.0, g="step") == pytest.approx(w(3.0)) and w(25.0, g="step") == 1.0
    assert w(0.0, epochs=0) == 1.0
    with pytest.raises(ValueError, match="granularity"):
        w(0.0, g="batch")


def test_dkd_objective_weights_and_validation():
    obj = DistillationObjective.from_names("dkd")
    assert obj.ce_weight == 1.0 and obj.weights == {"dkd": 1.0}
    defaults = {
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "warmup_epochs": 20.0,
        "warmup_granularity": "epoch",
        "logit_standardize": False,
    }
    # the temperature's signature default is None: 4 here, 2 with logit_standardize
    assert DKD.hyperparameters() == {**defaults, "temperature": None}
    assert DKD().hparams() == defaults
    for bad in ({"temperature": 0}, {"beta": -1}, {"warmup_epochs": -2}, {"warmup_granularity": "x"}):
        with pytest.raises(ValueError, match="dkd"):
            DKD(**bad)


def test_dkd_gradients_reach_only_the_student_and_gradcheck():
    torch.manual_seed(0)
    s = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    t = torch.randn(4, 6, dtype=torch.double)
    y = torch.tensor([0, 3, 5, 3])
    assert torch.autograd.gradcheck(lambda z: sum(dkd_loss(z, t, y, 3.0)), (s,))
    # the teacher side is differentiable too (SKD trains a target through it) - without NaN at masked entries
    t2 = t.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: sum(dkd_loss(s.detach(), z, y, 3.0)), (t2,))
    sf, tf = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    out = DKD(warmup_epochs=0)(Features(logits=sf), Features(logits=tf), StepInfo(labels=y))
    sum(out.values()).backward()
    assert sf.grad is not None and torch.isfinite(sf.grad).all() and sf.grad.abs().sum() > 0
    assert tf.grad is None


def test_dkd_zero_for_identical_logits_and_small_batches():
    z = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    assert all(v.abs().item() < 1e-6 for v in dkd_loss(z, z, y))
    # batch of 1 and 2, and a confident teacher whose tempered probabilities underflow: finite values and grads
    for b in (1, 2):
        s = torch.randn(b, 10, requires_grad=True)
        t = torch.randn(b, 10) * 200
        yy = torch.randint(0, 10, (b,))
        out = DKD(warmup_epochs=0)(Features(logits=s), Features(logits=t), StepInfo(labels=yy))
        total = sum(out.values())
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(s.grad).all()
    # two classes: the non-target part is a single class, NCKD is 0
    tckd, nckd = dkd_loss(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 1, 1]))
    assert nckd.abs().item() < 1e-6 and tckd.item() > 0
    with pytest.raises(ValueError, match="2 classes"):
        dkd_loss(torch.randn(3, 1), torch.randn(3, 1), torch.zeros(3, dtype=torch.long))


def test_dkd_training_steps_decrease_the_loss(batch):
    losses = training_losses(
        DKD(warmup_epochs=0),
        batch,
        0.02,
        teacher=cifar_teacher("resnet14", seed=1),
        scale=1.0,
    )
    assert losses[-1] < 0.8 * losses[0], losses
