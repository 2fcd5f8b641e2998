"""DML (mutual learning): the mutual terms against an independent computation, both networks learning on a real
mini batch, the symmetry of identical peers, IE's split between peers, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_distill.methods import DistillationObjective
from hf_distill.methods.dml import mutual_kl, peer_names
from hf_distill.training.mutual import attach_peers
from hf_distill.training.trainer import build_distillation_model
from tests.methods._common import ZOO_PAIRS, zoo_model


def _np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_mutual_kl_is_the_mean_kl_to_each_other_network():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 7, generator=g) for _ in range(3)]
    got = mutual_kl(logits, temperature=2.0)
    z = [x.numpy().astype(np.float64) / 2.0 for x in logits]
    for i in range(3):
        kls = []
        for j in range(3):
            if j != i:
                lp_j, lp_i = _np_log_softmax(z[j]), _np_log_softmax(z[i])
                kls.append((np.exp(lp_j) * (lp_j - lp_i)).sum(axis=1).mean() * 4.0)
        assert float(got[i]) == pytest.approx(np.mean(kls), rel=1e-5)


def test_mutual_targets_are_detached():
    a = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(4, 5, requires_grad=True)
    kl_a, _ = mutual_kl([a, b])
    kl_a.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0 and b.grad is None


def test_peer_names_default_to_the_students_architecture():
    assert peer_names("", "cifar_resnet20") == ["cifar_resnet20"]
    assert peer_names(" cifar_resnet8 , cifar_wrn_16_2", "x") == ["cifar_resnet8", "cifar_wrn_16_2"]


def _build(student, peers, x, **kwargs):
    obj = DistillationObjective.from_names("dml", method_kwargs={"dml": kwargs} if kwargs else None)
    attach_peers(obj, peers, student)
    built = build_distillation_model(student, None, obj)
    return built.container.train()


def _step(container, batch):
    out = container(pixel_values=batch["pixel_values"], labels=batch["labels"])
    return out["loss"], out["loss_terms"]


@pytest.mark.parametrize("ie", [False, True], ids=["dml", "dml_ie"])
def test_both_networks_learn_on_a_real_mini_batch(train_batch, ie):
    """Every network's own cross-entropy falls when the container is optimized (one optimizer, all peers)."""
    container = _build(zoo_model("resnet8", seed=0), [zoo_model("resnet8", seed=1)], train_batch, ie=ie)
    opt = torch.optim.SGD(container.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(12):
        loss, terms = _step(container, train_batch)
        first = first or {k: float(v.detach()) for k, v in terms.items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, last = _step(container, train_batch)
    for name in ("ce", "dml_peer1_ce"):
        assert float(last[name]) < 0.7 * first[name], (name, first[name], float(last[name]))
    if ie:
        assert {"dml_inh", "dml_exp", "dml_rec", "dml_peer1_inh", "dml_peer1_exp", "dml_peer1_rec"} <= set(
            last
        )
        assert (
            float(last["dml_rec"]) < first["dml_rec"]
            and float(last["dml_peer1_rec"]) < first["dml_peer1_rec"]
        )


@pytest.mark.parametrize("ie", [False, True], ids=["dml", "dml_ie"])
def test_two_peers_started_identical_stay_identical(train_batch, ie):
    container = _build(
        zoo_model("resnet8", seed=0), [zoo_model("resnet8", seed=5)], train_batch, same_init=True, ie=ie
    )
    student, peer = container.student, container.objective.methods["dml"].peer_nets[0]
    opt = torch.optim.SGD(container.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        loss, terms = _step(container, train_batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(terms["ce"].detach(), terms["dml_peer1_ce"].detach())
    moved = sum(
        float((p - q).abs().sum()) for p, q in zip(student.parameters(), zoo_model("resnet8").parameters())
    )
    assert moved > 0
    for (k, a), b in zip(student.state_dict().items(), peer.state_dict().values()):
        assert torch.equal(a, b), k  # BN running statistics included


def test_ie_exploration_and_inheritance_read_the_other_factor_without_training_it(train_batch):
    container = _build(zoo_model("resnet8", seed=0), [zoo_model("resnet8", seed=1)], train_batch, ie=True)
    _, terms = _step(container, train_batch)
    dml = container.objective.methods["dml"]
    (terms["dml_inh"] + terms["dml_exp"]).backward()
    # the student's IE terms train its own encoders and its own network, never the peer nor any auto-encoder
    assert all(p.grad is None for p in dml.peer_nets.parameters())
    assert all(p.grad is None for p in dml.ae.parameters())
    assert all(p.grad is not None for p in dml.inh_encoder[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in container.student.parameters())


@pytest.mark.parametrize("teacher, student", ZOO_PAIRS)
def test_every_zoo_student_with_a_peer_of_its_kind(teacher, student, train_batch):
    """The contract on the zoo, with peers attached (the registry-wide contract test builds dml without peers, which
    it refuses in one line)."""
    container = _build(zoo_model(student, seed=0), [zoo_model(student, seed=1)], train_batch, ie=True)
    loss, terms = _step(container, train_batch)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    loss.backward()
    dml = container.objective.methods["dml"]
    for net in (container.student, dml.peer_nets[0]):
        assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0


def test_mixed_architectures_and_a_teacher(train_batch):
    """Peers of other architectures; with teacher_weight every network also gets a KD term."""
    obj = DistillationObjective.from_names("dml", method_kwargs={"dml": {"teacher_weight": 0.5, "ie": True}})
    student = zoo_model("resnet8", seed=0)
    attach_peers(obj, [zoo_model("wrn_16_2", seed=1), zoo_model("resnet20", seed=2)], student)
    teacher = zoo_model("resnet20", seed=3).eval()
    built = build_distillation_model(student, teacher, obj)
    assert obj.needs_teacher
    with torch.no_grad():
        t = built.teacher_tap(teacher, train_batch["pixel_values"], built.teacher_request)
    out = built.container.train()(
        pixel_values=train_batch["pixel_values"], labels=train_batch["labels"], teacher_features=t
    )
    assert {"dml_kd", "dml_peer1_kd", "dml_peer2_kd", "dml_peer2_ce", "dml_peer2_inh"} <= set(
        out["loss_terms"]
    )


def test_refusals_are_one_line(train_batch):
    obj = DistillationObjective.from_names("dml")
    with pytest.raises(ValueError, match="^dml has no peer networks: .*attach_peers") as e:
        build_distillation_model(zoo_model("resnet8"), None, obj)
    assert "\n" not in str(e.value)
    obj = DistillationObjective.from_names("dml", method_kwargs={"dml": {"same_init": True}})
    with pytest.raises(ValueError, match="peer 1 .* another architecture"):
        attach_peers(obj, [zoo_model("resnet20")], zoo_model("resnet8"))
    obj = DistillationObjective.from_names("dml")
    attach_peers(obj, [zoo_model("resnet8", num_labels=7)], zoo_model("resnet8"))
    with pytest.raises(ValueError, match="peer 1 predicts"):
        build_distillation_model(zoo_model("resnet8"), None, obj)
    with pytest.raises(ValueError, match="dml form"):
        DistillationObjective.from_names("dml", method_kwargs={"dml": {"form": "l2"}})
