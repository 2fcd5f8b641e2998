"""FT (Factor Transfer, RepDistiller flavour): formula, gradients, shapes, real-data steps, the init stage."""

import numpy as np
import pytest
import torch

import hf_distill.methods.ft  # noqa: F401  (registers "ft")
from hf_distill.methods import DataInfo, Features, FeatureSpec, StepInfo, resolve_objective
from hf_distill.methods.factor import AutoEncoder, ConvCoder
from hf_distill.methods.ft import FT, ft_factor, ft_loss
from hf_distill.run.config import parse_method_flags
from hf_distill.training.checkpoints import method_state
from tests.methods._common import (
    built,
    checkpointing_trainer,
    np_block_pool,
    readers,
    sgd_losses,
    state_copy,
    teacher_features,
    training_losses,
    zoo_model,
)


# -- test-only helpers -------------------------------------------------------------------------------------------
def _np_ft(fs: np.ndarray, ft: np.ndarray, p1: float = 2.0, p2: float = 1.0) -> float:
    """RepDistiller's FactorTransfer.factor_loss written with numpy only."""
    size = min(fs.shape[2], ft.shape[2])
    fs, ft = np_block_pool(fs, size), np_block_pool(ft, size)

    def factor(f):
        v = (np.abs(f) ** p1).mean(axis=1).reshape(f.shape[0], -1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return float((np.abs(factor(fs) - factor(ft)) ** p2).mean())


# -- 1. value ----------------------------------------------------------------------------------------------------
def test_ft_loss_matches_numpy_formula_with_spatial_mismatch():
    rng = np.random.default_rng(0)
    fs = rng.standard_normal((2, 3, 4, 4))
    ft = rng.standard_normal((2, 5, 2, 2))
    for p1, p2 in ((2.0, 1.0), (2.0, 2.0), (4.0, 1.0)):
        got = ft_loss(torch.tensor(fs), torch.tensor(ft), p1, p2).item()
        assert got == pytest.approx(_np_ft(fs, ft, p1, p2), rel=1e-10)
    # the pooled side may be either one
    assert ft_loss(torch.tensor(ft), torch.tensor(fs)).item() == pytest.approx(_np_ft(ft, fs), rel=1e-10)
    # a concrete value, by hand: factors [1,0] and [0,1] -> mean |d| = (1 + 1) / 2
    a = torch.zeros(1, 1, 1, 2)
    b = torch.zeros(1, 1, 1, 2)
    a[..., 0], b[..., 1] = 3.0, 5.0
    assert ft_loss(a, b).item() == pytest.approx(1.0)
    assert ft_factor(a)[0].tolist() == pytest.approx([1.0, 0.0])


def test_ft_module_value_and_init_stage_loss_by_hand():
    torch.manual_seed(0)
    ft = FT()
    built(ft, zoo_model("resnet8"), zoo_model("resnet20", 1), x=torch.randn(2, 3, 32, 32))
    fs, ftm = torch.randn(4, 64, 8, 8), torch.randn(4, 64, 8, 8).relu()
    s, t = Features(maps={"stage3": fs}), Features(maps={"stage3": ftm})
    got = ft(s, t, StepInfo(labels=torch.zeros(4, dtype=torch.long)))["ft"].item()
    with torch.no_grad():
        exp = _np_ft(ft.translator(fs).double().numpy(), ft.paraphraser.encoder(ftm).double().numpy())
    assert got == pytest.approx(exp, rel=1e-5)
    rec = ft.paraphraser.decoder(ft.paraphraser.encoder(ftm))
    mse = ((rec - ftm) ** 2).sum() / rec.numel()
    assert ft.init_stage_loss(s, t, StepInfo(labels=torch.zeros(4))).keys() == {"rec"}
    assert ft.init_stage_loss(s, t, StepInfo(labels=torch.zeros(4)))["rec"].item() == pytest.approx(
        mse.item(), rel=1e-5
    )


def _explicit_coder(coder, x):
    """The coder's layers applied one by one, each convolution as torch's 3x3 (transposed) convolution."""
    for layer in coder:
        if isinstance(layer, torch.nn.ConvTranspose2d):
            x = torch.nn.functional.conv_transpose2d(x, layer.weight, layer.bias, padding=1)
        elif isinstance(layer, torch.nn.Conv2d):
            x = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
        else:
            x = layer(x)
    return x


@pytest.mark.parametrize("size", [1, 3])  # a timm network's 1x1 map at 32x32 input; a larger one
@pytest.mark.parametrize(
    "flags",
    [
        {"batch_norm": False, "bias": True},  # paraphraser encoder
        {"batch_norm": False, "bias": True, "transpose": True},  # paraphraser decoder
        {"batch_norm": True, "bias": True},  # translator
        {"batch_norm": True, "bias": False, "leading_activation": True, "he_init": True},  # IE-KD's coder
    ],
)
def test_coders_equal_explicit_3x3_convolutions_in_float64(size, flags):
    """FT's and IE-KD's networks, values and gradients, against the convolutions written out (a 1x1 map may take
    a shortcut through the centre tap: it must not change the numbers)."""
    torch.manual_seed(0)
    coder = ConvCoder(6, 4, **flags).double().train()
    x = torch.randn(5, 6, size, size, dtype=torch.double, requires_grad=True)
    got = coder(x)
    want = _explicit_coder(coder, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    params = [x, *coder.parameters()]
    weights = torch.randn_like(got)
    g_got = torch.autograd.grad((got * weights).sum(), params)
    g_want = torch.autograd.grad((want * weights).sum(), params)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


def test_ft_defaults_registry_and_cli():
    spec = resolve_objective("ft")
    assert spec.methods == ("ft",) and spec.weights == (200.0,) and spec.ce_weight == 1.0
    ft = FT()
    assert (
        ft.init_stage.epochs == 30 and ft.init_stage.learning_rate == 0.01 and not ft.init_stage.train_student
    )
    assert ft.hparams()["p1"] == 2.0 and ft.hparams()["p2"] == 1.0 and ft.hparams()["rate"] == 0.5
    flags = parse_method_flags(["--ft-init-epochs", "1", "--ft-init-learning-rate", "0.05"], ["ft"])
    ft = FT(**flags["ft"])
    assert ft.init_stage.epochs == 1 and ft.init_stage.learning_rate == 0.05
    assert FT(init_learning_rate=None).init_stage.learning_rate is None
    assert FT(student_layers="2").needs().student.maps == (2,)
    for bad in (dict(p1=0), dict(rate=0), dict(rate=1.5), dict(init_epochs=0), dict(init_learning_rate=-1)):
        with pytest.raises(ValueError, match="ft"):
            FT(**bad)


# -- 2. gradients ------------------------------------------------------------------------------------------------
def test_ft_loss_gradcheck():
    torch.manual_seed(0)
    fs = torch.randn(2, 3, 4, 4, dtype=torch.double, requires_grad=True)
    ft = torch.randn(2, 5, 2, 2, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x: ft_loss(x, ft), (fs,))
    assert torch.autograd.gradcheck(lambda x: ft_loss(x, ft, 2.0, 2.0), (fs,))


def test_gradients_reach_student_and_translator_only():
    torch.manual_seed(0)
    ft = FT()
    built(ft, zoo_model("resnet8"), zoo_model("resnet20", 1), x=torch.randn(2, 3, 32, 32))
    fs = torch.randn(4, 64, 8, 8, requires_grad=True)
    tmap = torch.randn(4, 64, 8, 8).relu()
    s, t = Features(maps={"stage3": fs}), Features(maps={"stage3": tmap})
    step = StepInfo(labels=torch.zeros(4, dtype=torch.long))
    # init stage: only the paraphraser learns
    ft.init_stage_loss(s, t, step)["rec"].backward()
    assert all(p.grad is not None for p in ft.paraphraser.parameters())
    assert all(p.grad is None for p in ft.translator.parameters()) and fs.grad is None
    ft.zero_grad(set_to_none=True)
    ft.on_init_stage_end()
    assert bool(ft.paraphraser.frozen) and not any(p.requires_grad for p in ft.paraphraser.parameters())
    ft.train()  # what the trainer does every step
    assert not ft.paraphraser.training and ft.translator.training
    ft(s, t, step)["ft"].backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert all(p.grad is not None for p in ft.translator.parameters())
    assert all(p.grad is None for p in ft.paraphraser.parameters())
    assert tmap.grad is None and not tmap.requires_grad


# -- 3. shapes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "teacher,student,expect",
    [
        ("resnet32x4", "shufflenetv2", (256, 464, (4, 4))),
        ("vgg13", "mobilenetv2", (512, 160, (2, 2))),
        ("shufflenetv2", "resnet8", (464, 64, (4, 4))),
    ],
)
def test_mixed_architectures(teacher, student, expect):
    c_t, c_s, size = expect
    torch.manual_seed(0)
    s_net, t_net = zoo_model(student), zoo_model(teacher, 1)
    x = torch.randn(2, 3, 32, 32)
    ft = FT()
    s_tap, t_tap, s_req, t_req = readers(built(ft, s_net, t_net, x=x), s_net, t_net)
    assert ft.translator[0].in_channels == c_s and ft.translator.out_channels == c_t // 2
    assert ft.paraphraser.encoder.in_channels == c_t and ft.paraphraser.decoder.out_channels == c_t
    fs = s_tap(s_net.train(), x, s_req)
    with torch.no_grad():
        tf = t_tap(t_net, x, t_req)
    out = ft(fs, tf, StepInfo(labels=torch.zeros(2, dtype=torch.long)))["ft"]
    assert out.ndim == 0 and torch.isfinite(out)
    rec = ft.init_stage_loss(fs, tf, StepInfo(labels=torch.zeros(2)))["rec"]
    assert torch.isfinite(rec)
    assert ft_factor(ft.translator(fs.maps[ft.student_layer_names[0]])).shape[1] >= size[0] * size[1]


def test_token_maps_and_tiny_rate_are_clear_errors():
    ft = FT()
    ft.student_layer_names, ft.teacher_layer_names = ["h"], ["h"]
    tok = FeatureSpec(names=("h",), maps={"h": (197, 384)})
    conv = FeatureSpec(names=("h",), maps={"h": (64, 8, 8)})
    with pytest.raises(ValueError, match="convolutional"):
        ft.setup(tok, conv, DataInfo(1, 10))
    ft = FT(rate=0.01)
    ft.student_layer_names, ft.teacher_layer_names = ["h"], ["h"]
    with pytest.raises(ValueError, match="rate"):
        ft.setup(conv, conv, DataInfo(1, 10))


# -- 4. real data ------------------------------------------------------------------------------------------------
def test_init_stage_then_main_steps_decrease_losses_on_real_batch(batch):
    torch.manual_seed(0)
    student, teacher = zoo_model("resnet8"), zoo_model("resnet20", 1)
    ft = built(FT(), student, teacher, x=batch["pixel_values"][:2])
    tf = teacher_features(ft, teacher, batch["pixel_values"])
    step = StepInfo(labels=batch["labels"])
    rec = sgd_losses(
        lambda: ft.init_stage_loss(None, tf, step)["rec"], ft.paraphraser.parameters(), 10, 0.01, final=False
    )
    assert rec[-1] < rec[0]
    ft.on_init_stage_end()
    frozen = {k: v.clone() for k, v in ft.paraphraser.state_dict().items()}
    vals = training_losses(
        ft,
        batch,
        0.01,
        steps=8,
        teacher=teacher,
        student=student,
        scale=200.0,
        terms=("ft",),
        momentum=0.0,
        final=False,
    )
    assert vals[-1] < vals[0]
    for k, v in ft.paraphraser.state_dict().items():
        assert torch.equal(v, frozen[k]), k


# -- the trainer: init stage, freezing, checkpoint, resume ----------------------------------------------------------
@pytest.mark.slow
def test_trainer_init_stage_freezes_paraphraser_and_resume_restores_it(tmp_path, tiny):
    t = checkpointing_trainer(tmp_path, tiny, "ft", {"init_epochs": 1})
    ft = t.model.objective.methods["ft"]
    assert isinstance(ft.paraphraser, AutoEncoder)
    p0, tr0 = state_copy(ft.paraphraser), state_copy(ft.translator)
    t.run_init_stage()
    rec = [h for h in t.state.log_history if "init_stage_loss" in h]
    assert len(rec) == 1 and rec[0]["init_stage_steps"] == 2 and rec[0]["init_stage_epochs"] == 1
    p1 = state_copy(ft.paraphraser)
    assert any(not torch.equal(p0[k], p1[k]) for k in p0 if k != "frozen")  # trained in the stage
    assert all(torch.equal(tr0[k], v) for k, v in state_copy(ft.translator).items())  # the translator waited
    assert bool(ft.paraphraser.frozen) and not any(p.requires_grad for p in ft.paraphraser.parameters())
    t.train()
    assert sum("init_stage_loss" in h for h in t.state.log_history) == 1
    assert any("loss_ft" in h for h in t.state.log_history)
    opt_ids = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not ({id(p) for p in ft.paraphraser.parameters()} & opt_ids)
    assert {id(p) for p in ft.translator.parameters()} <= opt_ids
    assert not ft.paraphraser.training
    for k, v in state_copy(ft.paraphraser).items():  # unchanged by the main stage
        assert torch.equal(v, p1[k]), k
    assert any(not torch.equal(tr0[k], v) for k, v in state_copy(ft.translator).items())
    state = method_state(str(tmp_path / "out" / "checkpoint-1"))
    pre = "objective.methods.ft.paraphraser."
    assert bool(state[pre + "frozen"]) and bool(state["init_stage_done"])
    for k, v in p1.items():
        assert torch.equal(state[pre + k], v), k

    # resume in a fresh trainer whose own (seed-7) paraphraser is untrained and different
    r = checkpointing_trainer(tmp_path, tiny, "ft", {"init_epochs": 1}, seed=7)
    rft = r.model.objective.methods["ft"]
    assert not torch.equal(rft.paraphraser.encoder[0].weight, p1["encoder.0.weight"])
    r.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    # not trained again: the only stage record is the one carried in the checkpoint's log history
    assert sum("init_stage_loss" in h for h in r.state.log_history) == 1
    for k, v in state_copy(rft.paraphraser).items():
        assert torch.equal(v, p1[k]), k
    assert not any(p.requires_grad for p in rft.paraphraser.parameters()) and not rft.paraphraser.training
    opt_ids = {id(p) for g in r.optimizer.param_groups for p in g["params"]}
    assert not ({id(p) for p in rft.paraphraser.parameters()} & opt_ids)
