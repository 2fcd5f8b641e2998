import math

import pytest
import torch
import torch.nn.functional as F

from hf_distill.methods import DistillationObjective, Features, FeatureSpec, StepInfo
from hf_distill.methods.icd import ICD, icd_loss
from hf_distill.methods.registry import PRESETS
from tests.methods._common import cifar_teacher, training_losses, zoo_features, zoo_model


def _icd_by_hand(zs, zt, scale, bias, alpha):
    """InfoNCE over the in-batch similarity matrix + alpha * KL(column softmax^T || row softmax), math only."""
    n = len(zs)
    L = [[scale * sum(a * b for a, b in zip(zs[i], zt[j])) + bias for j in range(n)] for i in range(n)]

    def lse(v):
        m = max(v)
        return m + math.log(sum(math.exp(x - m) for x in v))

    con = sum(lse(L[i]) - L[i][i] for i in range(n)) / n
    log_p1 = [[L[i][j] - lse(L[i]) for j in range(n)] for i in range(n)]
    cols = [[L[i][j] for i in range(n)] for j in range(n)]
    # p2[j][i] = softmax over i (dim 0) of column j, transposed: row j of p2 is column j of the matrix
    log_p2 = [[cols[j][i] - lse(cols[j]) for i in range(n)] for j in range(n)]
    inv = sum(math.exp(log_p2[r][c]) * (log_p2[r][c] - log_p1[r][c]) for r in range(n) for c in range(n)) / n
    return con, alpha * inv


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _spec(dim):
    return FeatureSpec(names=("stem",), embedding=(dim,), logits=(10,))


def test_icd_loss_matches_hand_computation():
    zs = [_unit(v) for v in ([1.0, 2.0, 0.0], [0.5, -1.0, 1.0], [0.0, 1.0, 3.0])]
    zt = [_unit(v) for v in ([2.0, 1.0, 0.5], [0.0, -1.0, 1.0], [1.0, 1.0, 1.0])]
    con, inv = icd_loss(torch.tensor(zs), torch.tensor(zt), math.e, 0.3)
    e_con, e_inv = _icd_by_hand(zs, zt, math.e, 0.3, 1.0)
    assert con.item() == pytest.approx(e_con, rel=1e-5)
    assert inv.item() == pytest.approx(e_inv, rel=1e-5)
    assert inv.item() > 0


def test_icd_method_matches_hand_computation_through_its_heads():
    torch.manual_seed(0)
    m = ICD(feat_dim=4)
    m.build(_spec(6), _spec(5), None)
    fs, ft = torch.randn(3, 6), torch.randn(3, 5)
    with torch.no_grad():
        m.b.fill_(0.2)
    out = m(Features(embedding=fs), Features(embedding=ft), StepInfo(labels=torch.zeros(3)))
    assert set(out) == {"icd_con", "icd_inv"}
    zs = [_unit(r) for r in (fs @ m.embed_s.weight.t() + m.embed_s.bias).tolist()]
    zt = [_unit(r) for r in (ft @ m.embed_t.weight.t() + m.embed_t.bias).tolist()]
    e_con, e_inv = _icd_by_hand(zs, zt, math.e, 0.2, 0.5)  # tau_param 1.0 -> scale e; alpha_inv 0.5
    assert out["icd_con"].item() == pytest.approx(e_con, rel=1e-5)
    assert out["icd_inv"].item() == pytest.approx(e_inv, rel=1e-5)


def test_icd_gradients_reach_heads_scale_bias_and_student_only():
    torch.manual_seed(0)
    m = ICD()
    m.build(_spec(64), _spec(256), None)
    fs = torch.randn(8, 64, requires_grad=True)
    ft = torch.randn(8, 256)
    sum(
        m(Features(embedding=fs), Features(embedding=ft), StepInfo(labels=torch.zeros(8))).values()
    ).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert ft.grad is None
    names = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert names == {"tau_param", "b", "embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"}
    # double-precision gradcheck of the loss in the embeddings, the scale and the bias
    zs = F.normalize(torch.randn(4, 5, dtype=torch.double), dim=1).requires_grad_(True)
    zt = F.normalize(torch.randn(4, 5, dtype=torch.double), dim=1).requires_grad_(True)
    scale = torch.tensor(2.5, dtype=torch.double, requires_grad=True)
    bias = torch.tensor(0.1, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c, d: sum(icd_loss(a, b, c, d)), (zs, zt, scale, bias))


def test_icd_learned_scale_stays_within_its_clamp():
    m = ICD()
    m.build(_spec(8), _spec(8), None)
    assert m.scale().item() == pytest.approx(math.e)
    opt = torch.optim.SGD(m.parameters(), lr=50.0)
    # identical, well separated samples: the contrastive loss keeps falling as the scale grows -> pushes it up
    f = torch.eye(8) * 3
    with torch.no_grad():
        m.embed_t.load_state_dict(m.embed_s.state_dict())
    seen = []
    for _ in range(20):
        out = m(Features(embedding=f), Features(embedding=f), StepInfo(labels=torch.zeros(8)))
        opt.zero_grad()
        (sum(out.values()) - 100 * m.scale()).backward()  # and an explicit hard push upwards
        opt.step()
        seen.append(m.scale().item())
    assert max(seen) <= 10.0 + 1e-5
    assert seen[-1] == pytest.approx(10.0)
    assert m.tau_param.item() > math.log(10.0)  # the raw parameter passed the cap, the scale did not
    # the logits use the clamped scale: the largest |logit| is at most max_tau + |b|
    z = torch.ones(2, 8)
    with torch.no_grad():
        con, _ = icd_loss(F.normalize(z, dim=1), F.normalize(z, dim=1), m.scale(), 0.0)
    assert con.item() == pytest.approx(math.log(2), rel=1e-5)  # equal rows: uniform, whatever the scale


def test_icd_fixed_scale_option():
    m = ICD(trainable_scale=False)
    m.build(_spec(8), _spec(8), None)
    names = {n for n, _ in m.named_parameters()}
    assert "tau_param" not in names and "b" not in names
    assert {"tau_param", "b"} <= set(m.state_dict())
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    literal = ICD(trainable_scale=False, fixed_scale=0.07)
    assert literal.scale().item() == pytest.approx(0.07, rel=1e-5)


@pytest.mark.parametrize(("teacher", "student"), [("resnet32x4", "shufflenetv2"), ("vgg13", "mobilenetv2")])
def test_icd_mismatched_embedding_dims_from_real_zoo_models(teacher, student):
    x = torch.randn(4, 3, 32, 32)
    nets = {k: zoo_model(k).eval() for k in (teacher, student)}
    with torch.no_grad():
        ft, fs = zoo_features(nets[teacher], x, maps=()), zoo_features(nets[student], x, maps=())
    specs = {
        k: FeatureSpec(names=("x",), embedding=tuple(f.embedding.shape[1:]), logits=(10,))
        for k, f in ((teacher, ft), (student, fs))
    }
    m = ICD()
    m.build(specs[student], specs[teacher], None)
    assert m.embed_s.in_features == fs.embedding.shape[1] and m.embed_t.in_features == ft.embedding.shape[1]
    assert (m.embed_s.in_features, m.embed_t.in_features) in {(1024, 256), (1280, 512)}
    out = m(fs, ft, StepInfo(labels=torch.zeros(4)))
    assert all(torch.isfinite(v) for v in out.values())


def test_icd_needs_embeddings_and_validation():
    n = ICD().needs()
    assert n.student.embedding and n.teacher.embedding and not n.student.maps and not n.index
    with pytest.raises(ValueError, match="embedding"):
        ICD().build(FeatureSpec(names=()), FeatureSpec(names=()), None)
    for bad in ({"feat_dim": 0}, {"alpha_inv": -1}, {"max_tau": 0}, {"fixed_scale": 0}):
        with pytest.raises(ValueError, match="icd"):
            ICD(**bad)


def test_icd_batch_of_one_and_two():
    m = ICD()
    m.build(_spec(16), _spec(16), None)
    for b in (1, 2):
        fs = torch.randn(b, 16, requires_grad=True)
        out = m(
            Features(embedding=fs), Features(embedding=torch.randn(b, 16)), StepInfo(labels=torch.zeros(b))
        )
        total = sum(out.values())
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(fs.grad).all()
        if b == 1:  # one sample is its own only candidate: both terms vanish
            assert total.abs().item() < 1e-6


def test_icd_weights_and_icd_kd_preset():
    obj = DistillationObjective.from_names("icd")
    assert obj.ce_weight == 1.0 and obj.weights == {"icd": 1.0}
    assert "icd_kd" in PRESETS
    obj = DistillationObjective.from_names("icd_kd")
    assert obj.ce_weight == 1.0 and obj.weights == {"kd": 1.0, "icd": 1.0}
    assert obj.needs().teacher.logits and obj.needs().teacher.embedding


def test_icd_gather_single_process_is_the_plain_loss():
    torch.manual_seed(0)
    a, b = ICD(gather=True), ICD()
    a.build(_spec(16), _spec(16), None)
    b.build(_spec(16), _spec(16), None)
    b.load_state_dict(a.state_dict())
    fs, ft = torch.randn(6, 16), torch.randn(6, 16)
    oa = a(Features(embedding=fs), Features(embedding=ft), StepInfo(labels=torch.zeros(6)))
    ob = b(Features(embedding=fs), Features(embedding=ft), StepInfo(labels=torch.zeros(6)))
    assert all(torch.equal(oa[k], ob[k]) for k in ob)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_icd_gather_over_two_processes_equals_full_batch():
    from tests.methods._common import check_gather_matches_full_batch

    check_gather_matches_full_batch(ICD, {"feat_dim": 16}, _spec(64), _spec(256), batch=8)


def test_icd_training_steps_decrease_the_loss(batch):
    assert batch["pixel_values"].shape == (16, 3, 32, 32)
    losses = training_losses(ICD(), batch, 0.1, teacher=cifar_teacher("resnet14", seed=1), scale=1.0)
    assert losses[-1] < 0.9 * losses[0], losses
