"""IE-KD: factor distances, channel split, gradients, shapes, real-data steps, composition, init stage, resume."""

import numpy as np
import pytest
import torch

import hf_distill.methods.at  # noqa: F401  (registers "at", a base)
import hf_distill.methods.ft  # noqa: F401  (registers "ft", a base)
import hf_distill.methods.iekd  # noqa: F401  (registers "iekd" and the "iekd_kd" preset)
from hf_distill.methods import (
    DataInfo,
    DistillationObjective,
    Features,
    FeatureSpec,
    StepInfo,
    resolve_objective,
)
from hf_distill.methods.at import at_loss
from hf_distill.methods.factor import mean_pnorm
from hf_distill.methods.iekd import IEKD, cosine_factor_loss, iekd_loss, normalized_distance
from hf_distill.methods.kd import kd_loss
from hf_distill.run.config import parse_method_flags
from hf_distill.training.checkpoints import method_state
from tests.methods._common import (
    built,
    checkpointing_trainer,
    np_block_pool,
    readers,
    sgd_losses,
    state_copy,
    zoo_model,
)


# -- test-only helpers -------------------------------------------------------------------------------------------
def _np_unit(x: np.ndarray) -> np.ndarray:
    v = x.reshape(x.shape[0], -1)
    return v / np.sqrt((v**2).sum(axis=1, keepdims=True))


def _np_dp(x: np.ndarray, y: np.ndarray, p: float = 1.0) -> float:
    """The reference's _factor_transfer: ||n(x) - n(y)||_p^p / numel, then the p-th root."""
    d = _np_unit(x) - _np_unit(y)
    return float((np.abs(d) ** p).sum() / d.size) ** (1.0 / p)


def _np_cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (_np_unit(x) * _np_unit(y)).sum(axis=1)


def _build(method, student, teacher, x, seed=0):
    """The trainer's dry run, with the RNG reseeded right before the build (the auto-encoder, the random split)."""
    return readers(built(method, student, teacher, x=x, seed=seed), student, teacher)


def _step(b=4):
    return StepInfo(labels=torch.zeros(b, dtype=torch.long))


# -- 1. values ---------------------------------------------------------------------------------------------------
def test_distances_match_numpy_formulas():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 4, 2, 2)), rng.standard_normal((3, 4, 2, 2))
    tx, ty = torch.tensor(x), torch.tensor(y)
    for p in (1.0, 2.0, 3.0):
        assert normalized_distance(tx, ty, p).item() == pytest.approx(_np_dp(x, y, p), rel=1e-10)
    cos = _np_cos(x, y)
    assert cosine_factor_loss(tx, ty).item() == pytest.approx((1 - cos).mean(), rel=1e-10)
    assert cosine_factor_loss(tx, ty, negative=True).item() == pytest.approx(np.abs(cos).mean(), rel=1e-10)
    # reconstruction loss (mean |x - y|^p)^(1/p)
    assert mean_pnorm(tx - ty, 1.0).item() == pytest.approx(np.abs(x - y).mean(), rel=1e-10)
    assert mean_pnorm(tx - ty, 2.0).item() == pytest.approx(np.sqrt(((x - y) ** 2).mean()), rel=1e-10)
    # by hand: n(x) = [1, 0], n(y) = [0, 1] -> d_1 = (1 + 1) / 2, cos = 0
    a, b = torch.tensor([[[[2.0, 0.0]]]]), torch.tensor([[[[0.0, 7.0]]]])
    assert normalized_distance(a, b).item() == pytest.approx(1.0)
    assert cosine_factor_loss(a, b).item() == pytest.approx(1.0)
    assert cosine_factor_loss(a, b, negative=True).item() == pytest.approx(0.0)


def test_iekd_loss_forms_and_spatial_pooling():
    rng = np.random.default_rng(1)
    t = rng.standard_normal((2, 3, 4, 4))
    i, e = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 3, 2, 2))
    tp = np_block_pool(t, 2)
    inh, exp = iekd_loss(torch.tensor(t), torch.tensor(i), torch.tensor(e), "norm", 1.0)
    assert inh.item() == pytest.approx(_np_dp(tp, i), rel=1e-10)
    assert exp.item() == pytest.approx(-_np_dp(tp, e), rel=1e-10)
    inh, exp = iekd_loss(torch.tensor(t), torch.tensor(i), torch.tensor(e), "cos")
    assert inh.item() == pytest.approx((1 - _np_cos(tp, i)).mean(), rel=1e-10)
    assert exp.item() == pytest.approx(np.abs(_np_cos(tp, e)).mean(), rel=1e-10)
    with pytest.raises(ValueError, match="form"):
        iekd_loss(torch.tensor(t), torch.tensor(i), torch.tensor(e), "l2")


def test_module_value_split_and_init_loss_by_hand():
    torch.manual_seed(0)
    m = IEKD(split="natural", inh_weight=2.0, exp_weight=0.5)
    _build(m, zoo_model("resnet8"), zoo_model("resnet20", 1), torch.randn(2, 3, 32, 32))
    assert m.channel_order.tolist() == list(range(64))
    assert m.teacher_ae.encoder.out_channels == 32 and m.inh_encoder[1].in_channels == 32
    fs, tmap = torch.randn(4, 64, 8, 8), torch.randn(4, 64, 8, 8).relu()
    s, t = Features(maps={"stage3": fs}), Features(maps={"stage3": tmap})
    out = m(s, t, _step())
    assert set(out) == {"iekd_inh", "iekd_exp"}
    with torch.no_grad():
        ft_ = m.teacher_ae.encoder(tmap).double().numpy()
        fi = m.inh_encoder(fs[:, :32]).double().numpy()
        fe = m.exp_encoder(fs[:, 32:]).double().numpy()
    assert out["iekd_inh"].item() == pytest.approx(2.0 * _np_dp(ft_, fi), rel=1e-5)
    assert out["iekd_exp"].item() == pytest.approx(-0.5 * _np_dp(ft_, fe), rel=1e-5)
    rec = m.init_stage_loss(s, t, _step())
    with torch.no_grad():
        r = m.teacher_ae.decoder(m.teacher_ae.encoder(tmap))
    assert set(rec) == {"rec"} and rec["rec"].item() == pytest.approx(
        (r - tmap).abs().mean().item(), rel=1e-5
    )


def test_random_split_is_a_fixed_permutation_and_odd_channels():
    m = IEKD(split="random")
    m.student_layer_names = m.teacher_layer_names = ["h"]
    m.ie_student_layer = m.ie_teacher_layer = "h"
    torch.manual_seed(3)
    m.setup(FeatureSpec(("h",), {"h": (5, 4, 4)}), FeatureSpec(("h",), {"h": (8, 4, 4)}), DataInfo(1, 10))
    order = m.channel_order.clone()
    assert sorted(order.tolist()) == list(range(5)) and order.tolist() != list(range(5))
    assert "channel_order" in dict(m.named_buffers())
    f = torch.arange(5.0).view(1, 5, 1, 1).expand(2, 5, 4, 4)
    inh, exp = m.split_channels(f)
    assert inh.shape[1] == 2 and exp.shape[1] == 3  # floor half inherits, as the reference
    assert inh[0, :, 0, 0].tolist() == order[:2].float().tolist()
    assert exp[0, :, 0, 0].tolist() == order[2:].float().tolist()
    m(Features(maps={"h": torch.randn(2, 5, 4, 4)}), Features(maps={"h": torch.randn(2, 8, 4, 4)}), _step(2))
    assert torch.equal(m.channel_order, order)  # drawn once, not per step


def test_defaults_registry_preset_and_cli():
    spec = resolve_objective("iekd")
    assert spec.methods == ("iekd",) and spec.weights == (1.0,) and spec.ce_weight == 1.0
    spec = resolve_objective("iekd_kd")
    assert spec.methods == ("iekd",) and spec.weights == (1.0,) and spec.ce_weight == 1.0
    assert spec.kwargs == {"iekd": {"base": "kd"}}
    m = IEKD()
    assert m.init_stage.epochs == 30 and m.init_stage.learning_rate == 0.1 and not m.init_stage.train_student
    hp = m.hparams()
    assert (hp["form"], hp["p"], hp["split"], hp["rate"], hp["inh_weight"], hp["exp_weight"]) == (
        "norm",
        1.0,
        "natural",
        0.5,
        1.0,
        1.0,
    )
    flags = parse_method_flags(
        ["--iekd-base", "kd", "--iekd-base-kwargs", '{"temperature": 2}', "--iekd-init-epochs", "1"], ["iekd"]
    )
    m = IEKD(**flags["iekd"])
    assert (
        m.base == "kd"
        and m.base_method.temperature == 2.0
        and m.base_weight == 1.0
        and m.init_stage.epochs == 1
    )
    assert IEKD(base="none").base_method is None
    bad = [
        (dict(form="l1"), "form"),
        (dict(split="relation"), "split"),
        (dict(rate=0), "rate"),
        (dict(init_epochs=0), "init_epochs"),
        (dict(base="iekd"), "itself"),
        (dict(base_kwargs={"temperature": 2}), "without a base"),
        (dict(base="no_such_method"), "Unknown distillation method"),
        (dict(base="kd", base_kwargs={"nope": 1}), "no hyperparameter"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            IEKD(**kw)


# -- 2. gradients ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form,p", [("norm", 1.0), ("norm", 2.0), ("cos", 1.0)])
def test_iekd_loss_gradcheck(form, p):
    torch.manual_seed(0)
    t = torch.randn(2, 3, 4, 4, dtype=torch.double)
    i = torch.randn(2, 3, 2, 2, dtype=torch.double, requires_grad=True)
    e = torch.randn(2, 3, 2, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: sum(iekd_loss(t, a, b, form, p)), (i, e))


def test_gradients_reach_student_and_encoders_only_and_ae_is_frozen():
    torch.manual_seed(0)
    m = IEKD(split="random")
    _build(m, zoo_model("resnet8"), zoo_model("resnet20", 1), torch.randn(2, 3, 32, 32))
    fs = torch.randn(4, 64, 8, 8, requires_grad=True)
    tmap = torch.randn(4, 64, 8, 8).relu()
    s, t = Features(maps={"stage3": fs}), Features(maps={"stage3": tmap})
    m.init_stage_loss(s, t, _step())["rec"].backward()
    assert all(p.grad is not None for p in m.teacher_ae.parameters())
    assert all(p.grad is None for p in m.inh_encoder.parameters()) and fs.grad is None
    m.zero_grad(set_to_none=True)
    m.on_init_stage_end()
    m.train()  # the trainer calls .train() on the whole container every step
    assert not m.teacher_ae.training and m.inh_encoder.training and m.exp_encoder.training
    assert not any(p.requires_grad for p in m.teacher_ae.parameters())
    bn_before = m.teacher_ae.encoder[2].running_mean.clone()
    out = m(s, t, _step())
    (out["iekd_inh"] + out["iekd_exp"]).backward()
    assert torch.equal(m.teacher_ae.encoder[2].running_mean, bn_before)  # eval mode: BN statistics fixed
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.inh_encoder.parameters())
    assert all(p.grad is not None for p in m.exp_encoder.parameters())
    assert all(p.grad is None for p in m.teacher_ae.parameters()) and tmap.grad is None


# -- 3. shapes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "teacher,student",
    [("resnet32x4", "shufflenetv2"), ("vgg13", "mobilenetv2"), ("shufflenetv2", "resnet8")],
)
def test_mixed_architectures(teacher, student):
    torch.manual_seed(0)
    s_net, t_net = zoo_model(student), zoo_model(teacher, 1)
    x = torch.randn(2, 3, 32, 32)
    m = IEKD(split="random", form="cos")
    s_tap, t_tap, s_req, t_req = _build(m, s_net, t_net, x)
    fs = s_tap(s_net.train(), x, s_req)
    with torch.no_grad():
        tf = t_tap(t_net, x, t_req)
    c_s = fs.maps[m.ie_student_layer].shape[1]
    c_t = tf.maps[m.ie_teacher_layer].shape[1]
    assert m.teacher_ae.encoder.out_channels == c_t // 2
    assert m.inh_encoder[1].in_channels == c_s // 2 and m.exp_encoder[1].in_channels == c_s - c_s // 2
    out = m(fs, tf, _step(2))
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert torch.isfinite(m.init_stage_loss(fs, tf, _step(2))["rec"])


def test_token_maps_and_single_channel_are_clear_errors():
    m = IEKD()
    m.ie_student_layer = m.ie_teacher_layer = "h"
    conv = FeatureSpec(("h",), {"h": (64, 8, 8)})
    with pytest.raises(ValueError, match="convolutional"):
        m.setup(FeatureSpec(("h",), {"h": (197, 384)}), conv, DataInfo(1, 10))
    with pytest.raises(ValueError, match="channel"):
        m.setup(FeatureSpec(("h",), {"h": (1, 8, 8)}), conv, DataInfo(1, 10))


# -- 4. real data ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["norm", "cos"])
def test_steps_on_real_batch_decrease_the_loss(batch, form):
    torch.manual_seed(0)
    student, teacher = zoo_model("resnet8"), zoo_model("resnet20", 1)
    m = IEKD(form=form, split="random")
    s_tap, t_tap, s_req, t_req = _build(m, student, teacher, batch["pixel_values"][:2])
    x = batch["pixel_values"]
    with torch.no_grad():
        tf = t_tap(teacher.eval(), x, t_req)
    step = StepInfo(labels=batch["labels"])
    rec = sgd_losses(
        lambda: m.init_stage_loss(None, tf, step)["rec"], m.teacher_ae.parameters(), 8, 0.1, final=False
    )
    assert rec[-1] < rec[0]
    m.on_init_stage_end()
    student.train()
    m.train()
    opt = torch.optim.SGD(
        [p for p in list(student.parameters()) + list(m.parameters()) if p.requires_grad], lr=0.1
    )
    vals = []
    for _ in range(8):
        out = m(s_tap(student, x, s_req), tf, step)
        loss = out["iekd_inh"] + out["iekd_exp"]
        opt.zero_grad()
        (100.0 * loss).backward()  # the factor distances are small (means over all elements)
        opt.step()
        vals.append((loss.item(), out["iekd_inh"].item(), out["iekd_exp"].item()))
    assert vals[-1][0] < vals[0][0]
    assert vals[-1][1] < vals[0][1]  # inheritance: closer to the teacher's factor
    assert vals[-1][2] < vals[0][2]  # exploration: further away


# -- composition with a base method ---------------------------------------------------------------------------------
def test_base_kd_needs_layers_terms_and_objective_prefix():
    torch.manual_seed(0)
    obj = DistillationObjective.from_names("iekd_kd")
    m = obj.methods["iekd"]
    assert m.needs().student.logits and m.needs().teacher.logits and m.needs().student.maps == ("last",)
    s_net, t_net = zoo_model("resnet8"), zoo_model("resnet20", 1)
    x = torch.randn(4, 3, 32, 32)
    s_tap, t_tap, s_req, t_req = _build(m, s_net, t_net, x[:2])
    assert m.student_layer_names == ["stage3"] and m.base_method.student_layer_names == []
    fs = s_tap(s_net.train(), x, s_req)
    with torch.no_grad():
        tf = t_tap(t_net, x, t_req)
    y = torch.tensor([0, 1, 2, 3])
    total, terms = obj(fs, tf, StepInfo(labels=y))
    assert set(terms) == {"ce", "iekd_inh", "iekd_exp", "iekd_base_kd"}
    assert terms["iekd_base_kd"].item() == pytest.approx(kd_loss(fs.logits, tf.logits, 4.0).item(), rel=1e-6)
    expected = terms["ce"] + terms["iekd_inh"] + terms["iekd_exp"] + terms["iekd_base_kd"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert m.init_stage.learning_rate == 0.1  # kd has no stage of its own


def test_base_ft_merges_the_init_stages():
    torch.manual_seed(0)
    m = IEKD(
        init_epochs=2,
        base="ft",
        base_kwargs={"init_epochs": 3, "student_layers": "stage2", "teacher_layers": "last"},
    )
    st = m.init_stage
    assert st.epochs == 3 and st.learning_rate == 0.01 and not st.train_student  # max epochs, the lower rate
    assert m.base_weight == 200.0
    assert IEKD(base="ft", init_learning_rate=0.05).init_stage.learning_rate == 0.05
    s_net, t_net = zoo_model("resnet8"), zoo_model("resnet20", 1)
    x = torch.randn(4, 3, 32, 32)
    s_tap, t_tap, s_req, t_req = _build(m, s_net, t_net, x[:2])
    assert m.student_layer_names == ["stage3", "stage2"] and m.teacher_layer_names == ["stage3"]
    assert m.base_method.student_layer_names == ["stage2"] and hasattr(m.base_method, "paraphraser")
    fs = s_tap(s_net.train(), x, s_req)
    with torch.no_grad():
        tf = t_tap(t_net, x, t_req)
    parts = m.init_stage_loss(fs, tf, StepInfo(labels=torch.zeros(4), epoch=0.5))
    assert set(parts) == {"rec", "base_rec"}
    assert parts["base_rec"].item() == pytest.approx(
        m.base_method.init_stage_loss(fs, tf, _step())["rec"].item()
    )
    sum(parts.values()).backward()
    assert all(p.grad is not None for p in m.teacher_ae.parameters())
    assert all(p.grad is not None for p in m.base_method.paraphraser.parameters())
    # past its own 2 epochs the IE auto-encoder stops; FT's paraphraser trains on until 3
    assert set(m.init_stage_loss(fs, tf, StepInfo(labels=torch.zeros(4), epoch=2.5))) == {"base_rec"}
    m.on_init_stage_end()
    assert bool(m.teacher_ae.frozen) and bool(m.base_method.paraphraser.frozen)
    out = m(fs, tf, _step())
    assert set(out) == {"iekd_inh", "iekd_exp", "base_ft"}
    ft_val = m.base_method(fs, tf, _step())["ft"]
    assert out["base_ft"].item() == pytest.approx(200.0 * ft_val.item(), rel=1e-6)


def test_base_at_composes():
    torch.manual_seed(0)
    m = IEKD(base="at")
    s_net, t_net = zoo_model("resnet8"), zoo_model("resnet20", 1)
    x = torch.randn(4, 3, 32, 32)
    s_tap, t_tap, s_req, t_req = _build(m, s_net, t_net, x[:2])
    assert set(m.base_method.student_layer_names) <= set(m.student_layer_names)
    fs = s_tap(s_net.train(), x, s_req)
    with torch.no_grad():
        tf = t_tap(t_net, x, t_req)
    out = m(fs, tf, _step())
    assert set(out) == {"iekd_inh", "iekd_exp", "base_at"}
    # AT's own loss on the maps it selected, weighted by AT's default weight (1000: it has no combo weight)
    at = m.base_method
    want = at_loss(fs.map_list(at.student_layer_names), tf.map_list(at.teacher_layer_names))
    assert m.base_weight == 1000.0 and out["base_at"].item() == pytest.approx(1000.0 * want.item(), rel=1e-6)
    # the IE terms are those of the method without a base
    plain = IEKD()
    _build(plain, s_net, t_net, x[:2])
    plain.load_state_dict(m.state_dict(), strict=False)
    alone = plain(fs, tf, _step())
    assert all(out[k].item() == pytest.approx(alone[k].item(), rel=1e-6) for k in ("iekd_inh", "iekd_exp"))


# -- the trainer: init stage, freezing, checkpoint, resume ----------------------------------------------------------
def _changed(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a if k != "frozen" and "num_batches" not in k)


@pytest.mark.slow
def test_trainer_init_stage_freezes_autoencoder_and_resume_restores_it_and_the_split(tmp_path, tiny):
    kw = {"init_epochs": 1, "split": "random"}
    t = checkpointing_trainer(tmp_path, tiny, "iekd", kw)
    m = t.model.objective.methods["iekd"]
    ae0, enc0, order = state_copy(m.teacher_ae), state_copy(m.inh_encoder), m.channel_order.clone()
    t.run_init_stage()
    rec = [h for h in t.state.log_history if "init_stage_loss" in h]
    assert len(rec) == 1 and rec[0]["init_stage_steps"] == 2 and rec[0]["init_stage_epochs"] == 1
    ae1 = state_copy(m.teacher_ae)
    assert _changed(ae0, ae1) and not _changed(enc0, state_copy(m.inh_encoder))
    assert bool(m.teacher_ae.frozen) and not any(p.requires_grad for p in m.teacher_ae.parameters())
    t.train()
    assert any("loss_iekd_inh" in h and "loss_iekd_exp" in h for h in t.state.log_history)
    opt_ids = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not ({id(p) for p in m.teacher_ae.parameters()} & opt_ids)
    assert {id(p) for p in m.inh_encoder.parameters()} | {
        id(p) for p in m.exp_encoder.parameters()
    } <= opt_ids
    assert not m.teacher_ae.training
    for k, v in state_copy(m.teacher_ae).items():  # weights and BN statistics unchanged by the main stage
        assert torch.equal(v, ae1[k]), k
    assert _changed(enc0, state_copy(m.inh_encoder)) and torch.equal(m.channel_order, order)
    state = method_state(str(tmp_path / "out" / "checkpoint-1"))
    pre = "objective.methods.iekd."
    assert bool(state[pre + "teacher_ae.frozen"]) and torch.equal(state[pre + "channel_order"], order)
    for k, v in ae1.items():
        assert torch.equal(state[pre + "teacher_ae." + k], v), k

    # a fresh trainer with another seed draws another split and another auto-encoder; resume restores both
    r = checkpointing_trainer(tmp_path, tiny, "iekd", kw, seed=7)
    rm = r.model.objective.methods["iekd"]
    assert not torch.equal(rm.channel_order, order)
    r.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    assert torch.equal(rm.channel_order, order)
    for k, v in state_copy(rm.teacher_ae).items():
        assert torch.equal(v, ae1[k]), k
    assert not any(p.requires_grad for p in rm.teacher_ae.parameters()) and not rm.teacher_ae.training
    opt_ids = {id(p) for g in r.optimizer.param_groups for p in g["params"]}
    assert not ({id(p) for p in rm.teacher_ae.parameters()} & opt_ids)


@pytest.mark.slow
def test_trainer_with_base_ft_runs_both_init_stages(tmp_path, tiny):
    t = checkpointing_trainer(
        tmp_path,
        tiny,
        "iekd",
        {"init_epochs": 1, "base": "ft", "base_kwargs": {"init_epochs": 1}},
        save_strategy="no",
    )
    m = t.model.objective.methods["iekd"]
    para = m.base_method.paraphraser
    ae0, p0 = state_copy(m.teacher_ae), state_copy(para)
    t.run_init_stage()  # one merged stage trains both auto-encoders
    rec = [h for h in t.state.log_history if "init_stage_loss" in h]
    assert len(rec) == 1 and rec[0]["init_stage_epochs"] == 1 and rec[0]["init_stage_steps"] == 2
    ae1, p1 = state_copy(m.teacher_ae), state_copy(para)
    assert _changed(ae0, ae1) and _changed(p0, p1)
    assert bool(m.teacher_ae.frozen) and bool(para.frozen)
    t.train()
    assert not _changed(ae1, state_copy(m.teacher_ae)) and not _changed(p1, state_copy(para))
    opt_ids = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not ({id(p) for p in m.teacher_ae.parameters()} & opt_ids)
    assert not ({id(p) for p in para.parameters()} & opt_ids)
    assert {id(p) for p in m.base_method.translator.parameters()} <= opt_ids
    assert any("loss_iekd_base_ft" in h for h in t.state.log_history)
