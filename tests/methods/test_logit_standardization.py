import numpy as np
import pytest
import torch

from hf_distill.methods import Features, StepInfo
from hf_distill.methods.cskd import CSKD
from hf_distill.methods.dkd import DKD, dkd_loss
from hf_distill.methods.kd import KD, kd_loss
from hf_distill.methods.logit_standardization import (
    STANDARDIZE_EPS,
    maybe_standardize,
    standardize_logits,
)
from hf_distill.methods.skd import SKD
from hf_distill.run.config import parse_method_flags

LOGIT_METHODS = (KD, DKD, CSKD)


def _np_zscore(z):
    """The paper's Z-score with numpy: per row, unbiased std, 1e-7 added to the denominator."""
    return (z - z.mean(axis=1, keepdims=True)) / (STANDARDIZE_EPS + z.std(axis=1, ddof=1, keepdims=True))


def _np_kd(s, t, temp):
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over rows, with numpy."""

    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    ls, lt = log_softmax(s / temp), log_softmax(t / temp)
    return float((np.exp(lt) * (lt - ls)).sum(axis=1).mean() * temp**2)


def _logits(seed=0, b=6, c=10):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(b, c)) * 3 + 1
    t = rng.normal(size=(b, c)) * 7 - 2
    return s, t


def test_standardize_matches_the_formula():
    s, _ = _logits()
    got = standardize_logits(torch.tensor(s)).numpy()
    np.testing.assert_allclose(got, _np_zscore(s), rtol=1e-12)
    np.testing.assert_allclose(got.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(got.std(axis=1, ddof=1), 1.0, rtol=1e-6)
    # a concrete row: [1, 2, 3] -> mean 2, unbiased std 1 -> [-1, 0, 1]
    row = standardize_logits(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.double))
    np.testing.assert_allclose(row.numpy(), [[-1.0, 0.0, 1.0]], atol=1e-6)
    # equal logits: zeros, not NaN (the eps)
    assert torch.equal(standardize_logits(torch.ones(1, 4)), torch.zeros(1, 4))


def test_kd_with_standardization_matches_numpy_and_the_paper_temperature():
    s, t = _logits()
    m = KD(logit_standardize=True)
    assert m.temperature == 2.0  # the paper's base temperature when the switch is on
    got = m(Features(logits=torch.tensor(s)), Features(logits=torch.tensor(t)), StepInfo(labels=None))["kd"]
    assert got.item() == pytest.approx(_np_kd(_np_zscore(s), _np_zscore(t), 2.0), rel=1e-10)
    assert KD(temperature=3.0, logit_standardize=True).temperature == 3.0
    # not the unstandardized value
    assert got.item() != pytest.approx(_np_kd(s, t, 2.0), rel=1e-3)


def test_off_by_default_results_unchanged():
    s, t = (torch.tensor(a) for a in _logits(1))
    y = torch.arange(6) % 10
    step = StepInfo(labels=y)
    for cls in LOGIT_METHODS:
        m = cls()
        assert m.logit_standardize is False and m.temperature == 4.0, cls.name
    assert KD()(Features(logits=s), Features(logits=t), step)["kd"].item() == pytest.approx(
        kd_loss(s, t, 4.0).item(), rel=1e-12
    )
    tckd, nckd = dkd_loss(s, t, y, 4.0)
    out = DKD(warmup_epochs=0)(Features(logits=s), Features(logits=t), step)
    assert out["dkd_tckd"].item() == pytest.approx(tckd.item(), rel=1e-12)
    assert out["dkd_nckd"].item() == pytest.approx(8.0 * nckd.item(), rel=1e-12)


@pytest.mark.parametrize("cls", LOGIT_METHODS)
def test_every_logit_method_sees_the_standardized_logits(cls):
    s, t = _logits(2)
    y = torch.arange(6) % 10
    step = StepInfo(labels=y, epoch=100.0)
    kw = {"warmup_epochs": 0} if cls is DKD else {}
    on = cls(logit_standardize=True, temperature=3.0, **kw)
    off = cls(temperature=3.0, **kw)
    got = on(Features(logits=torch.tensor(s)), Features(logits=torch.tensor(t)), step)
    ref = off(
        Features(logits=torch.tensor(_np_zscore(s))), Features(logits=torch.tensor(_np_zscore(t))), step
    )
    assert got.keys() == ref.keys()
    for k in got:
        assert got[k].item() == pytest.approx(ref[k].item(), rel=1e-9), k
    # invariant to a per-row shift and positive scale of either network's logits (the point of the z-score)
    scale = np.linspace(0.5, 4.0, 6)[:, None]
    moved = on(
        Features(logits=torch.tensor(s * scale + 5)), Features(logits=torch.tensor(t / scale - 3)), step
    )
    for k in got:
        assert moved[k].item() == pytest.approx(got[k].item(), rel=1e-6), k
    changed = off(Features(logits=torch.tensor(s * scale + 5)), Features(logits=torch.tensor(t)), step)
    assert any(changed[k].item() != pytest.approx(ref[k].item(), rel=1e-3) for k in got)


def test_gradient_flows_through_the_standardization_to_the_student_only():
    s = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x: kd_loss(*maybe_standardize(x, t, True), 2.0), (s,))
    loss = KD(logit_standardize=True)(Features(logits=s), Features(logits=t), StepInfo(labels=None))["kd"]
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_skd_forwards_the_switch_to_its_base():
    m = SKD(base="dkd", logit_standardize=True)
    assert m.base_method.logit_standardize is True and m.base_method.temperature == 2.0
    assert m.temperature == 2.0 and m.hparams()["logit_standardize"] is True
    assert m.base_kwargs["logit_standardize"] is True
    assert SKD().base_method.logit_standardize is False


def test_command_line_flag():
    assert parse_method_flags(["--kd-logit-standardize", "true"], ["kd"]) == {
        "kd": {"logit_standardize": True}
    }
    assert parse_method_flags(["--dkd-logit-standardize=false"], ["dkd"]) == {
        "dkd": {"logit_standardize": False}
    }
    with pytest.raises(ValueError, match="true/false"):
        parse_method_flags(["--kd-logit-standardize", "maybe"], ["kd"])
