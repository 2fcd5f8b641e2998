import math

import numpy as np
import pytest
import torch

from hf_distill.methods import DistillationObjective, Features
from hf_distill.methods.dist import DIST, dist_relations
from hf_distill.methods.objective import check_batch_size
from tests.helpers import trainer_args
from tests.methods._common import distill_trainer, train_split, zoo_model


def _softmax(z: np.ndarray, T: float) -> np.ndarray:
    e = np.exp((z - z.max(axis=1, keepdims=True)) / T)
    return e / e.sum(axis=1, keepdims=True)


def _pearson(a: list[float], b: list[float]) -> float:
    """The textbook sample correlation (no epsilon), 0 for a constant vector."""
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return 0.0 if va == 0 or vb == 0 else cov / math.sqrt(va * vb)


def _dist_reference(s: np.ndarray, t: np.ndarray, T: float) -> tuple[float, float]:
    """DIST's inter- and intra-class relations (Huang et al. 2022, Eq. 7-9) in plain loops, float64."""
    ys, yt = _softmax(s.astype(np.float64), T), _softmax(t.astype(np.float64), T)
    b, c = ys.shape
    inter = 1 - sum(_pearson(list(ys[i]), list(yt[i])) for i in range(b)) / b
    intra = 1 - sum(_pearson(list(ys[:, j]), list(yt[:, j])) for j in range(c)) / c
    return T * T * inter, T * T * intra


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_matches_an_independent_reference(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(12, 7, generator=g) * 3, torch.randn(12, 7, generator=g) * 3
    inter, intra = dist_relations(s.double(), t.double(), T)
    e_inter, e_intra = _dist_reference(s.numpy(), t.numpy(), T)
    assert inter.item() == pytest.approx(e_inter, rel=1e-6)
    assert intra.item() == pytest.approx(e_intra, rel=1e-6)
    # the method: the same terms, weighted by beta and gamma; float32 input as in training
    out = DIST(beta=2.0, gamma=0.5, temperature=T)(Features(logits=s), Features(logits=t), None)
    assert set(out) == {"dist_inter", "dist_intra"}
    assert out["dist_inter"].item() == pytest.approx(2.0 * e_inter, rel=1e-4)
    assert out["dist_intra"].item() == pytest.approx(0.5 * e_intra, rel=1e-4)


def test_dist_hand_computed_case():
    # teacher rows (.5, .3, .2) and (.2, .3, .5); the student predicts them the other way round
    pt = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]], dtype=torch.float64)
    zt, zs = pt.log(), pt.flip(0).log()
    inter, intra = dist_relations(zs, zt, 1.0)
    # per sample, centred x30: (5, -1, -4) against (-4, -1, 5): r = -39 / 42 = -13/14
    # (the authors' 1e-8 added to the product of the norms, here ~0.047, moves the values by ~2e-7)
    assert inter.item() == pytest.approx(1 + 13 / 14, abs=1e-6)
    # per class over the 2 samples: classes 0 and 2 anti-correlated (r = -1), class 1 constant (r = 0)
    assert intra.item() == pytest.approx(1 + 2 / 3, abs=1e-6)
    # T = 2 on the same logits: T^2 times the relations of the softer probabilities
    inter2, _ = dist_relations(zs, zt, 2.0)
    e2, _ = _dist_reference(zs.numpy(), zt.numpy(), 2.0)
    assert inter2.item() == pytest.approx(e2, rel=1e-6) and e2 > 4 * (1 + 0.5)


def test_dist_is_zero_for_a_shifted_and_scaled_copy_where_kl_is_not():
    """Relations, not values: a student whose probabilities are the teacher's mixed with the uniform distribution
    (an exact affine map of them, per row and per column) has both correlations 1, while KD's KL is positive."""
    g = torch.Generator().manual_seed(1)
    zt = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    pt = zt.softmax(1)
    zs = (0.4 * pt + 0.6 / 5).log()
    inter, intra = dist_relations(zs, zt, 1.0)
    assert abs(inter.item()) < 1e-6 and abs(intra.item()) < 1e-6
    kl = (pt * (pt.log() - zs.log_softmax(1))).sum(1).mean()
    assert kl.item() > 0.05
    # and the same logits: 0 (up to T^2 times the epsilon's effect)
    assert all(abs(v.item()) < 1e-5 for v in dist_relations(zt, zt, 3.0))


def test_dist_gradients_are_finite_and_reach_only_the_student():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: sum(dist_relations(z, t, 2.0)), (s,))
    # a confident teacher (probabilities underflow) and a large temperature: finite values and gradients
    for scale, T in ((300.0, 1.0), (1.0, 50.0)):
        sf = torch.randn(8, 10, requires_grad=True)
        tf = torch.randn(8, 10) * scale
        total = sum(DIST(temperature=T)(Features(logits=sf), Features(logits=tf), None).values())
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(sf.grad).all() and sf.grad.abs().sum() > 0
        assert tf.grad is None


def _intra_grad(batch: int) -> float:
    g = torch.Generator().manual_seed(batch)
    s = torch.randn(batch, 10, generator=g, requires_grad=True)
    t = torch.randn(batch, 10, generator=g)
    _, intra = dist_relations(s, t, 1.0)
    (grad,) = torch.autograd.grad(intra, s)
    return float(grad.norm())


def test_min_batch_size_is_three_for_the_intra_class_term():
    # two samples: every class column correlates +-1 whatever the values, so the intra term teaches nothing
    # (not exactly 0: the 1e-8 in the correlation's denominator)
    assert _intra_grad(2) < 1e-3 * _intra_grad(3)
    m = DIST()
    assert m.min_batch_size == 3
    check_batch_size({"dist": m}, per_device=3)
    with pytest.raises(
        ValueError, match=r"^dist compares the samples .* at least 3 .* batch of 2 per device"
    ):
        check_batch_size({"dist": m}, per_device=2)
    # the inter-class term alone needs no batch; with gather the global batch counts
    check_batch_size({"dist": DIST(gamma=0.0)}, per_device=1)
    check_batch_size({"dist": DIST(gather=True)}, per_device=2, num_processes=2)


def test_dist_defaults_objective_and_validation():
    assert DIST.hyperparameters() == {"beta": 1.0, "gamma": 1.0, "temperature": 1.0, "gather": False}
    obj = DistillationObjective.from_names("dist")
    assert obj.ce_weight == 1.0 and obj.weights == {"dist": 1.0}
    needs = DIST().needs()
    assert needs.teacher.logits and not needs.teacher.maps and not needs.teacher.embedding
    assert needs.student.logits and not needs.student.maps and not needs.index
    for bad in ({"temperature": 0.0}, {"beta": -1.0}, {"gamma": -0.1}):
        with pytest.raises(ValueError, match="dist"):
            DIST(**bad)


def test_dist_gather_single_process_is_the_plain_loss():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    a = DIST(gather=True)(Features(logits=s), Features(logits=t), None)
    b = DIST()(Features(logits=s), Features(logits=t), None)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_dist_gather_over_two_processes_equals_full_batch():
    from tests.methods._common import check_gather_matches_full_batch, zoo_spec

    spec = zoo_spec("resnet20")
    check_gather_matches_full_batch(DIST, {}, spec, spec, batch=8)


def test_dist_trains_a_zoo_student_through_the_trainer(tmp_path, subset_train):
    """cifar_resnet56 -> cifar_resnet20 (random weights): the trainer asks the teacher for its logits only (so
    the teacher cache can serve it), logs both terms, and the student's weights move."""
    teacher, student = zoo_model("resnet56", seed=1), zoo_model("resnet20", seed=0)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    t = distill_trainer(
        trainer_args(tmp_path / "out"),
        DistillationObjective.from_names("dist"),
        train_split(subset_train, 32).dataset,
        student,
        teacher,
    )
    assert t.teacher_request.logits and not t.teacher_request.maps and not t.teacher_request.embedding
    t.train()
    logs = [h for h in t.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert math.isfinite(h["loss_dist_inter"]) and h["loss_dist_inter"] > 0
        assert math.isfinite(h["loss_dist_intra"]) and h["loss_dist_intra"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in t.model.student.named_parameters())
