import numpy as np
import pytest
import torch
from torch import nn

from hf_distill.methods import Features, FeatureSpec, StepInfo, kdsvd, resolve_objective
from hf_distill.methods.kdsvd import (
    KDSVD,
    align_to_teacher,
    kdsvd_loss,
    rbf_relation,
    relation_gap,
    top_singular_vectors,
)
from tests.methods._common import (
    ZOO_PAIRS,
    built,
    check_loss_on_random_maps,
    check_resume_restores_method,
    training_losses,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(2, dtype=torch.long))


def _np_svd(fmap, n):
    """numpy: leading right singular vectors (C, n) and unit-normalized singular values of each (HW, C) matrix."""
    b, c = fmap.shape[:2]
    vs, ss = [], []
    for i in range(b):
        _, s, vh = np.linalg.svd(fmap[i].reshape(c, -1).T, full_matrices=False)
        vs.append(vh[:n].T)
        ss.append(s[:n] / np.linalg.norm(s[:n]))
    return np.stack(vs), np.stack(ss)


def _np_kdsvd(s_maps, t_maps, k, t_signs):
    """The published KDSVD loss with numpy loops. ``t_signs[l]`` (B, k) fixes the sign of each teacher singular
    vector (an SVD leaves it free) to the one the implementation drew; the student's sign follows the teacher's."""
    total, prev = 0.0, None
    for layer, (fs, ft) in enumerate(zip(s_maps, t_maps)):
        vt, st = _np_svd(ft, k)
        vt = vt * t_signs[layer][:, None, :]
        vs, _ = _np_svd(fs, k + 3)
        b = fs.shape[0]
        al = np.zeros_like(vt)
        for i in range(b):
            for j in range(k):
                cos = vs[i].T @ vt[i][:, j]
                best = int(np.argmax(np.abs(cos)))
                al[i][:, j] = np.sign(cos[best]) * vs[i][:, best]
        vt, al = vt * st[:, None, :], al * st[:, None, :]
        if prev is not None:
            ps, pt = prev
            rs = np.exp(-((al[:, :, None, :] - ps[:, None, :, :]) ** 2) / 8)
            rt = np.exp(-((vt[:, :, None, :] - pt[:, None, :, :]) ** 2) / 8)
            total += ((rs - rt) ** 2).sum() / b
        prev = (al, vt)
    return total


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("chunk", [10**9, 40, 70])  # one chunk; one sample per chunk; two, the last one short
def test_fused_relation_gap_equals_the_autograd_chain(k, chunk, monkeypatch):
    monkeypatch.setattr(kdsvd, "CPU_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 7, k, generator=g, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, 5, k, generator=g, dtype=torch.double, requires_grad=True)
    a_t, b_t = (
        torch.randn(3, 7, k, generator=g, dtype=torch.double),
        torch.randn(3, 5, k, generator=g).double(),
    )
    r_t = rbf_relation(a_t, b_t)
    got = relation_gap(a, b, a_t, b_t)
    want = (rbf_relation(a, b) - r_t).pow(2).sum()
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    ga, gb = torch.autograd.grad(got, (a, b))
    wa, wb = torch.autograd.grad(want, (a, b))
    torch.testing.assert_close((ga, gb), (wa, wb), rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, y: relation_gap(x, y, a_t, b_t), (a, b))
    # a NaN element counts 0 in the value, as the reference's zeroing of non-finite elements
    nan_a = a.detach().clone()
    nan_a[0, 0, 0] = float("nan")
    finite = (rbf_relation(nan_a, b) - r_t).pow(2)
    assert relation_gap(nan_a, b.detach(), a_t, b_t).item() == pytest.approx(
        finite.nansum().item(), rel=1e-12
    )
    # the teacher's side gets no gradient
    a_t.requires_grad_(True)
    relation_gap(a, b, a_t, b_t).backward()
    assert a_t.grad is None


def test_chunked_relation_gap_equals_the_whole_batch_in_float32(monkeypatch):
    """Chunks change only the order the loss is summed in: float32 values agree to rounding, gradients exactly."""
    g = torch.Generator().manual_seed(1)
    a, b, a_t, b_t = (torch.randn(6, c, 1, generator=g) * 0.5 for c in (32, 16, 32, 16))
    results = []
    for chunk in (10**9, 32 * 16 * 2):
        monkeypatch.setattr(kdsvd, "CPU_CHUNK_ELEMENTS", chunk)
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = relation_gap(x, y, a_t, b_t)
        loss.backward()
        results.append((loss.detach(), x.grad, y.grad))
    (l1, ga1, gb1), (l2, ga2, gb2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=0)
    assert torch.equal(ga1, ga2) and torch.equal(gb1, gb2)


def test_singular_vectors_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4, 3))
    v, s = top_singular_vectors(torch.tensor(x), 2)
    ref_v, ref_s = _np_svd(x, 2)
    # equal up to the sign of each vector
    signs = np.sign((v.numpy() * ref_v).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(v.numpy(), ref_v * signs, atol=1e-8)
    np.testing.assert_allclose(s.numpy(), ref_s, rtol=1e-10)
    # more vectors than the rank (H*W = 2 < C = 5): the missing ones are zeros
    v, s = top_singular_vectors(torch.tensor(x[:, :, :1, :2]), 4)
    assert v.shape == (3, 5, 4) and torch.all(v[:, :, 2:] == 0) and torch.all(s[:, 2:] == 0)


def test_alignment_picks_the_closest_student_vector_with_the_teacher_sign():
    e = torch.eye(4, dtype=torch.double).unsqueeze(0)  # student vectors e0..e3
    t = torch.tensor([[0.1], [0.2], [-0.9], [0.1]], dtype=torch.double).unsqueeze(0)
    got = align_to_teacher(e, t / t.norm())
    assert torch.equal(got[0, :, 0], torch.tensor([0.0, 0.0, -1.0, 0.0], dtype=torch.double))


def test_loss_matches_numpy_reference():
    rng = np.random.default_rng(1)
    shapes_s = [(2, 6, 4, 4), (2, 5, 2, 2), (2, 7, 2, 2)]
    shapes_t = [(2, 6, 8, 8), (2, 5, 4, 4), (2, 7, 2, 2)]
    s = [rng.normal(size=sh) for sh in shapes_s]
    t = [rng.normal(size=sh) for sh in shapes_t]
    for k in (1, 2):
        got = kdsvd_loss([torch.tensor(a) for a in s], [torch.tensor(a) for a in t], k)
        signs = []
        for a in t:
            v, _ = top_singular_vectors(torch.tensor(a), k)
            ref, _ = _np_svd(a, k)
            signs.append(np.sign((v.numpy() * ref).sum(axis=1)))
        assert got.item() == pytest.approx(_np_kdsvd(s, t, k, signs), rel=1e-9)
        assert got.item() > 0
    # identical student and teacher maps: identical relations, zero loss
    same = [torch.tensor(a) for a in t]
    assert kdsvd_loss(same, same, 1).item() == pytest.approx(0.0, abs=1e-12)


def test_gradient_is_finite_with_repeated_singular_values_and_reaches_student_and_connectors():
    s_spec = FeatureSpec(names=("stem", "a", "b"), maps={"a": (3, 4, 4), "b": (5, 2, 2)})
    t_spec = FeatureSpec(names=("stem", "a", "b"), maps={"a": (4, 4, 4), "b": (5, 2, 2)})
    m = built(KDSVD(), s_spec, t_spec).double()
    assert isinstance(m.connectors[0], nn.Sequential) and isinstance(m.connectors[1], nn.Identity)
    fa = torch.rand(2, 3, 4, 4, dtype=torch.double)
    fb = torch.rand(2, 5, 2, 2, dtype=torch.double)
    fb[:, 2:] = 0  # three zero channels: repeated zero singular values
    fa.requires_grad_(True)
    fb.requires_grad_(True)
    ta, tb = torch.rand(2, 4, 4, 4, dtype=torch.double), torch.rand(2, 5, 2, 2, dtype=torch.double)
    loss = m(Features(maps={"a": fa, "b": fb}), Features(maps={"a": ta, "b": tb}), STEP)["kdsvd"]
    loss.backward()
    assert loss.item() > 0
    assert torch.isfinite(fa.grad).all() and fa.grad.abs().sum() > 0
    assert torch.isfinite(fb.grad).all() and fb.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert m.connectors[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("teacher, student", ZOO_PAIRS)
def test_zoo_pairs(teacher, student):
    s_spec, t_spec = zoo_spec(student), zoo_spec(teacher)
    m = built(KDSVD(), s_spec, t_spec)
    assert len(m.connectors) == len(m.student_layer_names) == len(m.teacher_layer_names) >= 2
    for conn, sn, tn in zip(m.connectors, m.student_layer_names, m.teacher_layer_names):
        cs, ct = s_spec.maps[sn][0], t_spec.maps[tn][0]
        if cs == ct:
            assert isinstance(conn, nn.Identity)
        else:
            assert (conn[0].in_channels, conn[0].out_channels) == (cs, ct)
    check_loss_on_random_maps(m, s_spec, t_spec, "kdsvd", STEP)


def test_options_errors_and_defaults():
    with pytest.raises(ValueError, match="at least two"):
        built(KDSVD(student_layers="last"), zoo_spec("resnet20"), zoo_spec("resnet56"))
    with pytest.raises(ValueError, match="--kdsvd-student-layers / --kdsvd-teacher-layers"):
        built(KDSVD(), zoo_spec("resnet20"), zoo_spec("vgg13"))
    tokens = FeatureSpec(names=("h0", "h1", "h2"), maps={"h1": (5, 8), "h2": (5, 8)})
    with pytest.raises(ValueError, match=r"convolutional \(C, H, W\)"):
        built(KDSVD(), tokens, tokens)
    for bad in ({"k": 0}, {"connector": "x"}):
        with pytest.raises(ValueError, match="kdsvd"):
            KDSVD(**bad)
    # the teacher's layers selected on their own, paired in order
    m = built(
        KDSVD(student_layers="stage2,stage3", teacher_layers="1,2"),
        zoo_spec("resnet20"),
        zoo_spec("resnet56"),
    )
    assert m.student_layer_names == ["stage2", "stage3"] and m.teacher_layer_names == ["stage1", "stage2"]
    spec = resolve_objective("kdsvd")
    assert spec.weights == (1.0,) and spec.ce_weight == 1.0
    assert KDSVD().hparams() == {
        "k": 1,
        "connector": "auto",
        "student_layers": "stages",
        "teacher_layers": "",
    }


def test_training_steps_decrease_the_loss(batch):
    losses = training_losses(KDSVD(connector="always"), batch, lr=0.05, scale=10.0)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_trainer_resume_restores_the_connectors(tmp_path, tiny):
    check_resume_restores_method(tmp_path, tiny, "kdsvd", {"connector": "always"})
