import math

import pytest
import torch

from hf_distill.methods import DistillationObjective, Features, StepInfo
from hf_distill.methods.kd import KD, kd_loss


def _kl_by_hand(s, t, T):
    """KL(softmax(t/T) || softmax(s/T)) for one row, with math only."""
    es = [math.exp(v / T) for v in s]
    et = [math.exp(v / T) for v in t]
    ps = [v / sum(es) for v in es]
    pt = [v / sum(et) for v in et]
    return sum(a * math.log(a / b) for a, b in zip(pt, ps))


def test_kd_matches_hand_computation():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    T = 2.0
    expected = T * T * (_kl_by_hand(s[0], t[0], T) + _kl_by_hand(s[1], t[1], T)) / 2
    got = kd_loss(torch.tensor(s), torch.tensor(t), T)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # a concrete number too, computed once by hand from the formula above
    assert expected == pytest.approx(0.95808, abs=1e-5)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 10)
    assert kd_loss(z, z, 4.0).abs().item() < 1e-6
    assert kd_loss(z, z.flip(1), 4.0).item() > 0


def test_kd_per_sample_temperature_equals_rowwise_scalar():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    temps = torch.tensor([[1.0], [2.0], [5.0]])
    rows = [kd_loss(s[i : i + 1], t[i : i + 1], float(temps[i])) for i in range(3)]
    assert kd_loss(s, t, temps).item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-6)


def test_kd_gradcheck_and_gradient_only_to_student():
    s = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 3.0), (s,))
    t.requires_grad_(False)
    kd_loss(s, t, 3.0).backward()
    assert s.grad is not None and t.grad is None


def test_kd_method_and_objective_weights():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([0, 1, 2, 3])
    obj = DistillationObjective.from_names("kd")
    assert obj.ce_weight == pytest.approx(0.1) and obj.weights == {"kd": pytest.approx(0.9)}
    total, terms = obj(Features(logits=s), Features(logits=t), StepInfo(labels=y))
    ce = torch.nn.functional.cross_entropy(s, y)
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert terms["kd"].item() == pytest.approx(kd_loss(s, t, 4.0).item(), rel=1e-6)
    assert total.item() == pytest.approx(0.1 * ce.item() + 0.9 * terms["kd"].item(), rel=1e-6)


def test_kd_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        KD(temperature=0)
