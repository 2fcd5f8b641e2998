import math

import pytest
import torch
import torch.nn.functional as F

from hf_distill.methods import DistillationObjective, Features, FeatureSpec, StepInfo
from hf_distill.methods.cskd import CSKD
from hf_distill.methods.dkd import DKD, dkd_loss
from hf_distill.methods.kd import kd_loss
from hf_distill.methods.skd import SKD, LearningSimplifier
from hf_distill.run.config import parse_method_flags
from tests.methods._common import (
    built,
    cifar_teacher,
    distill_trainer,
    train_split,
    trainer_args,
    training_losses,
)

SPEC = FeatureSpec(names=("stem",), logits=(10,))


def _built(**kw) -> SKD:
    return built(SKD(**kw), SPEC, SPEC)


def _simplify_by_hand(m: SKD, z_t: torch.Tensor) -> torch.Tensor:
    """The simplifier written out: attention over the batch of normalized z_t / T, a bounded residual through the
    gate, times T."""
    s = m.simplifier
    T = m.temperature
    u = z_t / T
    mu = u.mean(1, keepdim=True)
    x = (u - mu) / ((u - mu).pow(2).mean(1, keepdim=True) + 1e-5).sqrt()
    q = x @ s.q.weight.t() + s.q.bias
    k = x @ s.k.weight.t() + s.k.bias
    v = x @ s.v.weight.t() + s.v.bias
    scores = q @ k.t() / math.sqrt(s.dim)
    a = scores.exp() / scores.exp().sum(1, keepdim=True)
    delta = torch.tanh((a @ v) @ s.out.weight.t() + s.out.bias)
    return T * (u + m.max_shift * torch.tanh(s.gate) * delta)


def _kd_by_hand(s, t, T):
    ls, lt = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
    return T * T * (lt.exp() * (lt - ls)).sum(1).mean()


def test_skd_starts_as_plain_kd():
    torch.manual_seed(0)
    m = _built()
    s, t, y = torch.randn(6, 10), torch.randn(6, 10) * 3, torch.randint(0, 10, (6,))
    out = m(Features(logits=s), Features(logits=t), StepInfo(labels=y))
    assert set(out) == {"skd_kd", "skd_label", "skd_anchor"}
    assert out["skd_kd"].item() == pytest.approx(kd_loss(s, t, 4.0).item(), rel=1e-6)
    assert abs(out["skd_anchor"].item()) < 1e-6  # the target is the teacher itself
    assert out["skd_label"].item() == pytest.approx(F.cross_entropy(t, y).item(), rel=1e-6)


def test_skd_value_matches_hand_computation_for_kd_dkd_cskd_bases():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 10), torch.randn(5, 10) * 3, torch.randint(0, 10, (5,))
    for base, kw in (("kd", {}), ("dkd", {"beta": 2.0, "warmup_epochs": 0}), ("cskd", {})):
        m = _built(base=base, base_kwargs=kw, label_weight=0.5, anchor_weight=0.25)
        with torch.no_grad():
            m.simplifier.gate.fill_(0.7)
        out = m(Features(logits=s), Features(logits=t), StepInfo(labels=y))
        target = _simplify_by_hand(m, t)
        torch.testing.assert_close(m.simplified_logits(t), target)
        T = 4.0
        # the base sees logits whose softmax at its own temperature is the simplified distribution
        assert m.temperature == T
        if base == "kd":
            assert out["skd_kd"].item() == pytest.approx(_kd_by_hand(s, target, T).item(), rel=1e-5)
        elif base == "dkd":
            tckd, nckd = dkd_loss(s, target, y, T)
            assert out["skd_dkd_tckd"].item() == pytest.approx(tckd.item(), rel=1e-5)
            assert out["skd_dkd_nckd"].item() == pytest.approx(2.0 * nckd.item(), rel=1e-5)
        else:
            ref = CSKD()(Features(logits=s), Features(logits=target), StepInfo(labels=y))
            assert out["skd_cskd"].item() == pytest.approx(ref["cskd"].item(), rel=1e-5)
            assert out["skd_cskd_cswt"].item() == pytest.approx(ref["cskd_cswt"].item(), rel=1e-5)
        assert out["skd_label"].item() == pytest.approx(0.5 * F.cross_entropy(target, y).item(), rel=1e-5)
        anchor = (
            T * T * (F.softmax(t / T, 1) * (F.log_softmax(t / T, 1) - F.log_softmax(target / T, 1))).sum(1)
        )
        assert out["skd_anchor"].item() == pytest.approx(0.25 * anchor.mean().item(), rel=1e-4)


def test_skd_gradients_reach_simplifier_and_student_not_teacher():
    torch.manual_seed(0)
    m = _built()
    s = torch.randn(6, 10, requires_grad=True)
    t = torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    # at gate 0 only the gate moves (the attention branch is multiplied by it)
    sum(m(Features(logits=s), Features(logits=t), StepInfo(labels=y)).values()).backward()
    assert m.simplifier.gate.grad.abs().item() > 0
    assert all(p.grad.abs().sum() == 0 for n, p in m.simplifier.named_parameters() if n != "gate")
    m.zero_grad()
    s.grad = None
    with torch.no_grad():
        m.simplifier.gate.fill_(0.5)
    sum(m(Features(logits=s), Features(logits=t), StepInfo(labels=y)).values()).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert {n for n, _ in m.named_parameters()} == {
        f"simplifier.{a}.{b}" for a in ("q", "k", "v", "out") for b in ("weight", "bias")
    } | {"simplifier.gate"}
    # double-precision gradcheck of the simplifier in its input and its parameters
    torch.manual_seed(1)
    simp = LearningSimplifier(4, dim=3, gate_init=0.3).double()
    u = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(simp, (u,))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in simp.named_parameters()}

    def with_params(x, *ps):
        return torch.func.functional_call(simp, dict(zip(params, ps)), (x,))

    assert torch.autograd.gradcheck(with_params, (u.detach(), *params.values()))


def test_skd_parameter_count_is_small():
    m = _built(attn_dim=64)
    assert sum(p.numel() for p in m.parameters()) == 4 * 10 * 64 + 3 * 64 + 10 + 1  # 2,763
    big = SKD()
    big.build(SPEC, FeatureSpec(names=(), logits=(100,)), None)
    assert sum(p.numel() for p in big.parameters()) == 4 * 100 * 64 + 3 * 64 + 100 + 1


def test_skd_state_dict_round_trip():
    torch.manual_seed(0)
    a = _built(base="dkd")
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.manual_seed(5)
    b = _built(base="dkd")
    sd = a.state_dict()
    assert {"simplifier.gate", "simplifier.q.weight", "simplifier.out.bias"} <= set(sd)
    b.load_state_dict(sd)
    t = torch.randn(4, 10)
    torch.testing.assert_close(a.simplified_logits(t), b.simplified_logits(t), rtol=0, atol=0)


def test_skd_batch_of_one_and_two():
    m = _built()
    with torch.no_grad():
        m.simplifier.gate.fill_(0.5)
    for n in (1, 2):
        s, t, y = torch.randn(n, 10, requires_grad=True), torch.randn(n, 10), torch.zeros(n).long()
        out = m(Features(logits=s), Features(logits=t), StepInfo(labels=y))
        target = _simplify_by_hand(m, t).detach()
        if n == 1:  # one sample attends only to itself: A = 1, and the target has a closed form
            sm = m.simplifier
            x = F.layer_norm(t / 4.0, (10,))
            closed = 4.0 * (t / 4.0 + 2.0 * math.tanh(0.5) * torch.tanh(sm.out(sm.v(x))))
            torch.testing.assert_close(target, closed.detach(), rtol=1e-5, atol=1e-5)
        assert out["skd_kd"].item() == pytest.approx(_kd_by_hand(s, target, 4.0).item(), rel=1e-5)
        assert out["skd_label"].item() == pytest.approx(F.cross_entropy(target, y).item(), rel=1e-5)
        assert out["skd_anchor"].item() == pytest.approx(
            _kd_by_hand(target, t, 4.0).item(), rel=1e-4, abs=1e-7
        )
        sum(out.values()).backward()
        assert s.grad.abs().sum() > 0


def test_skd_base_options_and_validation():
    m = SKD(base="dkd", base_kwargs='{"beta": 2.0, "temperature": 2.0}')
    assert m.base_method.beta == 2.0 and m.temperature == 2.0  # T follows the base unless given
    # the base's full hyperparameters are recorded (reproducible logs), and rebuild the same base
    assert m.hparams()["base_kwargs"] == {**DKD.hyperparameters(), "beta": 2.0, "temperature": 2.0}
    assert SKD(base="dkd", base_kwargs=m.hparams()["base_kwargs"]).base_method.hparams() == m.base_kwargs
    assert SKD(base="kd", temperature=3.0).temperature == 3.0
    assert SKD(base="DKD").base == "dkd"
    with pytest.raises(ValueError, match="itself"):
        SKD(base="skd")
    with pytest.raises(ValueError, match="Unknown distillation method"):
        SKD(base="nope")
    with pytest.raises(ValueError, match="no hyperparameter"):
        SKD(base="kd", base_kwargs={"beta": 8})
    with pytest.raises(ValueError, match="JSON"):
        SKD(base_kwargs="{beta: 8}")
    import hf_distill.methods.icd  # noqa: F401

    with pytest.raises(ValueError, match="teacher's logits"):
        SKD(base="icd")
    for bad in ({"attn_dim": 0}, {"label_weight": -1.0}, {"temperature": 0.0}):
        with pytest.raises(ValueError, match="skd"):
            SKD(**bad)


def test_skd_cli_flags_and_weights():
    kw = parse_method_flags(["--skd-base", "dkd", "--skd-base-kwargs", '{"beta": 8}'], ["skd"])
    assert kw == {"skd": {"base": "dkd", "base_kwargs": {"beta": 8}}}
    obj = DistillationObjective.from_names("skd", method_kwargs=kw)
    assert obj.methods["skd"].base_method.beta == 8.0
    assert SKD.default_weights({"base": "dkd"}) == (1.0, 1.0, None)
    assert SKD.default_weights({"base": "cskd"}) == (2.0, 1.0, None)
    assert (
        SKD.default_weights()
        == (SKD.default_weight, SKD.default_ce_weight, SKD.combo_weight)
        == (0.9, 0.1, 1.0)
    )


def test_skd_training_steps_decrease_the_loss(batch):
    m = SKD(gate_init=0.1)
    losses = training_losses(m, batch, 0.02, teacher=cifar_teacher("resnet14", seed=1), scale=1.0)
    assert losses[-1] < 0.8 * losses[0], losses
    assert m.simplifier.gate.item() != pytest.approx(0.1)  # the simplifier was trained too


def test_skd_parts_are_optimized_and_checkpointed_by_the_trainer(tmp_path, subset_train):
    from hf_distill.training.checkpoints import method_state
    from tests.helpers import timm_model

    tr = train_split(subset_train, 32)
    args = trainer_args(tmp_path / "out", save_strategy="steps", save_steps=2)
    t = distill_trainer(
        student=timm_model(seed=0),
        teacher=timm_model(seed=100),
        objective=DistillationObjective.from_names(
            "skd", method_kwargs={"skd": {"base": "dkd", "gate_init": 0.1}}
        ),
        args=args,
        train_dataset=tr.dataset,
    )
    skd = t.model.objective.methods["skd"]
    assert skd.base_method.name == "dkd"
    t.train()
    opt_ids = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in skd.simplifier.parameters()} <= opt_ids
    assert skd.simplifier.gate.item() != pytest.approx(0.1)
    state = method_state(str(tmp_path / "out" / "checkpoint-2"))
    for n, p in skd.simplifier.named_parameters():
        assert torch.equal(state[f"objective.methods.skd.simplifier.{n}"], p.detach()), n
    logs = [h for h in t.state.log_history if "loss" in h]
    assert logs and all("loss_skd_dkd_tckd" in h and "loss_skd_label" in h for h in logs)
