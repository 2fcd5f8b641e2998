import math

import pytest
import torch

from hf_distill.methods import DistillationObjective, Features, StepInfo
from hf_distill.methods.cskd import CSKD, class_cosine_distance, cswt_temperatures
from tests.methods._common import cifar_teacher, training_losses


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _cs_by_hand(s, t, temps):
    """1 - mean over classes of the cosine between the class columns of the batch probabilities (math only).

    ``temps`` gives each row's temperature."""
    ps = [_softmax(r, T) for r, T in zip(s, temps)]
    pt = [_softmax(r, T) for r, T in zip(t, temps)]
    n_cls = len(s[0])
    cos = []
    for c in range(n_cls):
        a = [row[c] for row in ps]
        b = [row[c] for row in pt]
        dot = abs(sum(x * y for x, y in zip(a, b)))
        cos.append(dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) + 1e-8))
    return 1 - sum(cos) / n_cls


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


S = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.5], [2.0, 2.0, -1.0, 0.0]]
TT = [[2.0, 1.0, 0.0, 0.3], [1.0, 1.0, 1.0, -2.0], [0.5, 3.0, -0.5, 0.0]]


def test_cskd_matches_hand_computation_with_cswt():
    T, lo, hi = 4.0, 2.0, 6.0
    # CSWT temperatures by hand: per-sample cosine at T = 1, linear from lo (max) to hi (min)
    sims = [_cos(_softmax(a, 1.0), _softmax(b, 1.0)) for a, b in zip(S, TT)]
    s_max, s_min = max(sims), min(sims)
    temps = [(hi - lo) / (s_min - s_max) * (v - s_max) + lo for v in sims]
    expected_cs = T * T * _cs_by_hand(S, TT, [T] * 3)
    expected_cswt = (sum(temps) / 3) ** 2 * _cs_by_hand(S, TT, temps)
    out = CSKD()(
        Features(logits=torch.tensor(S)), Features(logits=torch.tensor(TT)), StepInfo(labels=torch.zeros(3))
    )
    assert set(out) == {"cskd", "cskd_cswt"}
    assert out["cskd"].item() == pytest.approx(expected_cs, rel=1e-5)
    assert out["cskd_cswt"].item() == pytest.approx(expected_cswt, rel=1e-5)
    got_t = cswt_temperatures(torch.tensor(S), torch.tensor(TT), lo, hi).squeeze(1).tolist()
    assert got_t == pytest.approx(temps, rel=1e-5)
    no_cswt = CSKD(use_cswt=False)(Features(logits=torch.tensor(S)), Features(logits=torch.tensor(TT)), None)
    assert set(no_cswt) == {"cskd"}


def test_cswt_temperatures_range_order_and_no_grad():
    torch.manual_seed(0)
    s = torch.randn(32, 10, requires_grad=True)
    t = torch.randn(32, 10) * 2
    temps = cswt_temperatures(s, t, 2.0, 6.0)
    assert temps.shape == (32, 1) and not temps.requires_grad and temps.grad_fn is None
    assert temps.min().item() == pytest.approx(2.0) and temps.max().item() == pytest.approx(6.0)
    assert ((temps >= 2.0 - 1e-6) & (temps <= 6.0 + 1e-6)).all()
    sim = torch.cosine_similarity(torch.softmax(s, 1), torch.softmax(t, 1), dim=1)
    assert temps[sim.argmax()].item() == pytest.approx(2.0)
    assert temps[sim.argmin()].item() == pytest.approx(6.0)
    # a more similar sample never gets a higher temperature
    order = sim.argsort()
    assert (temps.squeeze(1)[order].diff() <= 1e-6).all()


def test_cswt_degenerate_batches_use_the_mean_temperature_without_nan():
    row_s, row_t = torch.randn(1, 10), torch.randn(1, 10)
    for s, t in ((row_s.repeat(4, 1), row_t.repeat(4, 1)), (row_s, row_t)):
        s = s.clone().requires_grad_(True)
        temps = cswt_temperatures(s, t, 2.0, 6.0)
        assert torch.allclose(temps, torch.full_like(temps, 4.0))
        out = CSKD()(Features(logits=s), Features(logits=t), StepInfo(labels=torch.zeros(len(s))))
        total = sum(out.values())
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(s.grad).all()


def test_cskd_batch_of_one_and_two():
    # one sample: every class column is a scalar, the cosines are ~1, the loss ~0
    s, t = torch.randn(1, 10, requires_grad=True), torch.randn(1, 10)
    out = CSKD()(Features(logits=s), Features(logits=t), StepInfo(labels=torch.zeros(1, dtype=torch.long)))
    assert all(abs(v.item()) < 1e-4 for v in out.values())
    sum(out.values()).backward()
    assert torch.isfinite(s.grad).all()
    s2, t2 = torch.randn(2, 10, requires_grad=True), torch.randn(2, 10) * 3
    out = CSKD()(Features(logits=s2), Features(logits=t2), StepInfo(labels=torch.zeros(2, dtype=torch.long)))
    assert all(torch.isfinite(v) and v.item() > 0 for v in out.values())
    temps = cswt_temperatures(s2, t2)
    assert sorted(temps.squeeze(1).tolist()) == pytest.approx([2.0, 6.0])


def test_cskd_gradients_reach_only_the_student_and_gradcheck():
    torch.manual_seed(0)
    s = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    t = torch.randn(5, 4, dtype=torch.double)
    temps = cswt_temperatures(s, t).double()
    assert torch.autograd.gradcheck(lambda z: class_cosine_distance(z, t, 3.0), (s,))
    assert torch.autograd.gradcheck(lambda z: class_cosine_distance(z, t, temps), (s,))
    sf, tf = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    m = CSKD()
    sum(m(Features(logits=sf), Features(logits=tf), StepInfo(labels=torch.zeros(6))).values()).backward()
    assert sf.grad is not None and sf.grad.abs().sum() > 0 and tf.grad is None
    assert list(m.parameters()) == [] and list(m.buffers()) == []


def test_cskd_weights_and_validation():
    obj = DistillationObjective.from_names("cskd")
    assert obj.ce_weight == 1.0 and obj.weights == {"cskd": 2.0}
    defaults = {
        "temperature": 4.0,
        "low_temperature": 2.0,
        "high_temperature": 6.0,
        "use_cswt": True,
        "gather": False,
        "logit_standardize": False,
    }
    # the temperature's signature default is None: 4 here, 2 with logit_standardize
    assert CSKD.hyperparameters() == {**defaults, "temperature": None}
    assert CSKD().hparams() == defaults
    with pytest.raises(ValueError, match="low_temperature"):
        CSKD(low_temperature=7.0)
    with pytest.raises(ValueError, match="temperature"):
        CSKD(temperature=0.0)


def test_cskd_gather_single_process_is_the_plain_loss():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.zeros(8, dtype=torch.long)
    a = CSKD(gather=True)(Features(logits=s), Features(logits=t), StepInfo(labels=y))
    b = CSKD()(Features(logits=s), Features(logits=t), StepInfo(labels=y))
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_cskd_gather_over_two_processes_equals_full_batch():
    from tests.methods._common import check_gather_matches_full_batch, zoo_spec

    spec = zoo_spec("resnet8")
    check_gather_matches_full_batch(CSKD, {}, spec, spec, batch=8)


def test_cskd_training_steps_decrease_the_loss(batch):
    losses = training_losses(CSKD(), batch, 0.05, teacher=cifar_teacher("resnet14", seed=1), scale=1.0)
    assert losses[-1] < 0.8 * losses[0], losses
