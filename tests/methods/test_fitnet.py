import numpy as np
import pytest
import torch
from torch import nn

from hf_distill.methods import Features, FeatureSpec, InitStage, StepInfo, resolve_objective
from hf_distill.methods.fitnet import FitNet, HintRegressor, hint_loss
from hf_distill.run.config import parse_method_flags
from tests.methods._common import (
    built,
    distill_trainer,
    random_features,
    train_split,
    trainer_args,
    training_losses,
    zoo_model,
    zoo_spec,
)


def test_hint_loss_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    expected = float(np.mean((a - b) ** 2))
    assert hint_loss(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(expected, rel=1e-12)
    # a concrete value: ones vs zeros -> 1; ones vs 3s -> 4
    assert hint_loss(torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)).item() == 1.0
    assert hint_loss(torch.ones(1, 2, 2, 2), 3 * torch.ones(1, 2, 2, 2)).item() == 4.0


def test_method_value_equals_manual_conv_bn_relu_mse():
    spec_s = FeatureSpec(names=("stem", "stage1", "stage2"), maps={"stage2": (3, 4, 4)})
    spec_t = FeatureSpec(names=("stem", "stage1", "stage2"), maps={"stage2": (5, 4, 4)})
    m = built(FitNet(), spec_s, spec_t).double()
    assert isinstance(m.regressor.conv, nn.Conv2d) and m.regressor.conv.kernel_size == (1, 1)
    torch.manual_seed(0)
    fs, ft = torch.rand(6, 3, 4, 4, dtype=torch.double), torch.rand(6, 5, 4, 4, dtype=torch.double)
    got = m(Features(maps={"stage2": fs}), Features(maps={"stage2": ft}), StepInfo(labels=torch.zeros(6)))
    # independent: 1x1 conv as an einsum, train-mode BN with biased batch variance, ReLU, MSE (numpy)
    w = m.regressor.conv.weight.detach().numpy()[:, :, 0, 0]
    bias = m.regressor.conv.bias.detach().numpy()
    y = np.einsum("oc,bchw->bohw", w, fs.numpy()) + bias[None, :, None, None]
    mu, var = y.mean(axis=(0, 2, 3), keepdims=True), y.var(axis=(0, 2, 3), keepdims=True)
    y = np.maximum((y - mu) / np.sqrt(var + 1e-5), 0)  # BN init: gamma 1, beta 0
    assert got["fitnet"].item() == pytest.approx(float(np.mean((y - ft.numpy()) ** 2)), rel=1e-9)


@pytest.mark.parametrize(
    "s_hw, t_hw, kind",
    [
        ((16, 16), (8, 8), "stride2"),
        ((8, 8), (16, 16), "transpose"),
        ((8, 8), (8, 8), "1x1"),
        ((10, 9), (8, 8), "valid"),
        ((4, 4), (16, 16), "upsample"),
    ],
)
def test_regressor_handles_spatial_sizes(s_hw, t_hw, kind):
    reg = HintRegressor((7, *s_hw), (11, *t_hw))
    conv = reg.conv
    if kind == "stride2":
        assert isinstance(conv, nn.Conv2d) and conv.stride == (2, 2) and conv.kernel_size == (3, 3)
    elif kind == "transpose":
        assert isinstance(conv, nn.ConvTranspose2d) and conv.kernel_size == (4, 4)
    elif kind == "1x1":
        assert conv.kernel_size == (1, 1)
    elif kind == "valid":
        assert conv.kernel_size == (3, 2)
    else:
        assert reg.resize
    out = reg(torch.randn(2, 7, *s_hw))
    assert out.shape == (2, 11, *t_hw) and (out >= 0).all()


def test_gradients_reach_student_and_regressor_only():
    spec_s = FeatureSpec(names=("a", "b", "c"), maps={"c": (2, 4, 4)})
    spec_t = FeatureSpec(names=("a", "b", "c"), maps={"c": (3, 2, 2)})
    m = built(FitNet(), spec_s, spec_t).double()
    fs = torch.rand(3, 2, 4, 4, dtype=torch.double, requires_grad=True)
    ft = torch.rand(3, 3, 2, 2, dtype=torch.double)

    def f(x):
        return m(Features(maps={"c": x}), Features(maps={"c": ft}), StepInfo(labels=torch.zeros(3)))["fitnet"]

    assert torch.autograd.gradcheck(f, (fs,))
    f(fs).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0 and ft.grad is None
    assert all(p.grad is not None for p in m.parameters())


def test_regressor_maps_the_student_map_to_the_teachers_shape():
    s_spec, t_spec = zoo_spec("shufflenetv2"), zoo_spec("resnet32x4")  # a cross-architecture pair
    m = built(FitNet(), s_spec, t_spec)
    assert m.student_layer_names == [s_spec.names[2]] and m.teacher_layer_names == [t_spec.names[2]]
    fs, ft = random_features(s_spec, 4), random_features(t_spec, 4, seed=1)
    out = m.regressor(fs.maps[m.student_layer_names[0]])
    assert tuple(out.shape[1:]) == t_spec.maps[m.teacher_layer_names[0]]
    loss = m(fs, ft, StepInfo(labels=torch.zeros(4, dtype=torch.long)))["fitnet"]
    assert torch.isfinite(loss) and loss > 0


def test_layer_options_and_errors():
    s_spec, t_spec = zoo_spec("shufflenetv2"), zoo_spec("resnet32x4")
    m = built(FitNet(teacher_layers="stage3", student_layers=-1), s_spec, t_spec)
    assert m.teacher_layer_names == ["stage3"] and m.student_layer_names == [s_spec.names[-1]]
    with pytest.raises(ValueError, match="exactly one feature map"):
        FitNet(student_layers="stages")
    with pytest.raises(ValueError, match="out of range"):
        built(FitNet(student_layers=9), s_spec, t_spec)
    tokens = FeatureSpec(names=("h0", "h1", "h2"), maps={"h2": (5, 8)})
    with pytest.raises(ValueError, match=r"convolutional \(C, H, W\)"):
        built(FitNet(), tokens, tokens)
    # command line: a position or a layer name
    for value, sel in (("3", 3), ("stage3", "stage3"), ("-1", -1)):
        kw = parse_method_flags(["--fitnet-student-layers", value], ["fitnet"])["fitnet"]
        assert FitNet(**kw).student_layers == sel and FitNet(**kw).needs().teacher.maps == (sel,)
    kw = parse_method_flags(["--fitnet-student-layers", "stage1"], ["fitnet"])["fitnet"]
    assert FitNet(**kw).needs().student.maps == ("stage1",)


def test_defaults_and_optional_init_stage():
    spec = resolve_objective("fitnet")
    assert spec.weights == (100.0,) and spec.ce_weight == 1.0
    m = FitNet()
    assert m.init_stage is None and m.hparams()["student_layers"] == 2 and m.hparams()["init_epochs"] == 0.0
    m2 = FitNet(init_epochs=2, init_learning_rate=0.01)
    assert m2.init_stage == InitStage(epochs=2.0, learning_rate=0.01, train_student=True)
    spec_s = FeatureSpec(names=("a", "b", "c"), maps={"c": (3, 4, 4)})
    m2 = built(FitNet(init_epochs=2), spec_s, spec_s)
    f_s, f_t = Features(maps={"c": torch.rand(2, 3, 4, 4)}), Features(maps={"c": torch.rand(2, 3, 4, 4)})
    step = StepInfo(labels=torch.zeros(2))
    assert torch.equal(m2.init_stage_loss(f_s, f_t, step)["fitnet"], m2(f_s, f_t, step)["fitnet"])
    with pytest.raises(ValueError, match="init_epochs"):
        FitNet(init_epochs=-1)


def test_training_steps_decrease_the_loss(batch):
    losses = training_losses(FitNet(), batch, lr=0.01)
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.slow
def test_init_stage_runs_in_the_trainer(tmp_path, subset_train):
    from hf_distill import DistillationObjective

    tr = train_split(subset_train, 32)
    # the transformers defaults for the optimizer, the logging interval and the seed
    args = trainer_args(tmp_path, max_steps=1, learning_rate=0.01, optim=None, logging_steps=None, seed=None)
    t = distill_trainer(
        student=zoo_model("resnet8"),
        teacher=zoo_model("resnet8", seed=1),
        objective=DistillationObjective.from_names("fitnet", method_kwargs={"fitnet": {"init_epochs": 1}}),
        args=args,
        train_dataset=tr.dataset,
    )
    student = t.model.student
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    summary = t.run_init_stage()
    assert summary["init_stage_steps"] == 2  # 32 samples, batch 16, 1 epoch
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    # the hint reaches the student only up to the guided layer (stage2): stage3 and the classifier stay unchanged
    assert changed and any("stage2" in n or "layer2" in n for n in changed), sorted(changed)
    assert not any("stage3" in n or "layer3" in n or "classifier" in n or "fc" in n for n in changed), sorted(
        changed
    )
