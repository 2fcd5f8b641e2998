import functools

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

import hf_distill.losses.fsp  # noqa: F401  (registers "fsp")
from hf_distill import DistillationTrainer
from hf_distill.data import collate, prepare_split
from hf_distill.losses import DataInfo, DistillationObjective, Features, FeatureSpec, InitStage, StepInfo
from hf_distill.losses.base import resolve_selectors
from hf_distill.losses.fsp import FSP, fsp_loss, fsp_matrix
from hf_distill.models.modeling_cifar import create_cifar_model
from hf_distill.models.taps import TapRequest, feature_tap
from tests.conftest import TEACHER_DIR
from tests.helpers import CIFAR_SPEC

DATA = DataInfo(num_samples=64, num_classes=10)
STEP = StepInfo(labels=torch.zeros(2, dtype=torch.long))


# -- test-only helpers ------------------------------------------------------------------------------------------
def _np_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Average pooling by equal square blocks (what adaptive pooling does for divisible sizes)."""
    b, c, h, w = x.shape
    k = h // size
    return x.reshape(b, c, size, k, size, k).mean(axis=(3, 5))


def _np_fsp(bottom: np.ndarray, top: np.ndarray) -> np.ndarray:
    """G[b, j, i] = mean over positions of top[b, j] * bottom[b, i], by explicit loops."""
    size = min(bottom.shape[2], top.shape[2])
    bottom, top = _np_pool(bottom, size), _np_pool(top, size)
    b, ci, cj = bottom.shape[0], bottom.shape[1], top.shape[1]
    g = np.zeros((b, cj, ci))
    for n in range(b):
        for j in range(cj):
            for i in range(ci):
                g[n, j, i] = (top[n, j] * bottom[n, i]).mean()
    return g


def _np_fsp_loss(s_maps, t_maps) -> float:
    total = 0.0
    for k in range(len(s_maps) - 1):
        gs, gt = _np_fsp(s_maps[k], s_maps[k + 1]), _np_fsp(t_maps[k], t_maps[k + 1])
        total += ((gs - gt) ** 2).mean()
    return total


def _model_spec(model, selectors=("all",)) -> FeatureSpec:
    """FeatureSpec of a real model from one forward through its tap (as the trainer's dry run)."""
    tap = feature_tap(model)
    names = resolve_selectors(selectors, tap.names)
    with torch.no_grad():
        f = tap(model.eval(), torch.randn(2, 3, 32, 32), TapRequest(maps=tuple(names)))
    return FeatureSpec(names=tuple(tap.names), maps={k: tuple(v.shape[1:]) for k, v in f.maps.items()})


@functools.cache
def _zoo_spec(arch: str) -> FeatureSpec:
    torch.manual_seed(0)
    return _model_spec(create_cifar_model(arch, num_labels=10))


def _built(method: FSP, s_spec: FeatureSpec, t_spec: FeatureSpec) -> FSP:
    method.resolve_layers(s_spec.names, t_spec.names)
    method.build(s_spec, t_spec, DATA)
    return method


def _teacher():
    """The pretrained CIFAR-10 resnet56 when it is there (realistic activations), else a random zoo resnet20."""
    if (TEACHER_DIR / "config.json").exists():
        from hf_distill.models.loading import load_model

        return load_model(str(TEACHER_DIR), role="teacher").eval(), 0.05
    return create_cifar_model("resnet20", num_labels=10).eval(), 0.01


def _spec(shapes: dict[str, tuple[int, ...]]) -> FeatureSpec:
    return FeatureSpec(names=tuple(shapes), maps=dict(shapes))


@pytest.fixture(scope="module")
def real_batch(subset_train):
    split = prepare_split(subset_train, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=64)
    return split, collate([split.dataset[i] for i in range(16)])


# -- 1. values against independent computations ------------------------------------------------------------------
def test_fsp_hand_value():
    # one sample, one channel, two positions: G_s = (1*3 + 2*4)/2 = 5.5, G_t = (1*1 + 1*1)/2 = 1
    s = [torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[3.0, 4.0]]]])]
    t = [torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2)]
    assert fsp_matrix(s[0], s[1]).item() == pytest.approx(5.5)
    assert fsp_loss(s, t).item() == pytest.approx(4.5**2)


def test_fsp_loss_matches_numpy_reference_with_pooling():
    g = torch.Generator().manual_seed(0)
    # stem 8x8, stage1 8x8, stage2 4x4 (pooling of the bottom), stage3 2x2; teacher at other spatial sizes
    s = [torch.randn(2, c, h, h, generator=g) for c, h in ((3, 8), (3, 8), (4, 4), (5, 2))]
    t = [torch.randn(2, c, h, h, generator=g) for c, h in ((3, 4), (3, 4), (4, 2), (5, 2))]
    want = _np_fsp_loss([x.numpy() for x in s], [x.numpy() for x in t])
    assert fsp_loss(s, t).item() == pytest.approx(want, rel=1e-5)
    # the method (main-stage term on) gives the same
    names = ("stem", "stage1", "stage2", "stage3")
    m = _built(
        FSP(main_stage_loss=True),
        _spec({n: tuple(x.shape[1:]) for n, x in zip(names, s)}),
        _spec({n: tuple(x.shape[1:]) for n, x in zip(names, t)}),
    )
    out = m(Features(maps=dict(zip(names, s))), Features(maps=dict(zip(names, t))), STEP)
    assert out["fsp"].item() == pytest.approx(want, rel=1e-5)


def test_main_stage_is_zero_by_default_and_init_stage_configured():
    m = FSP()
    assert m.init_stage == InitStage(epochs=30, learning_rate=None, train_student=True)
    assert FSP(init_epochs=0, main_stage_loss=True).init_stage is None
    spec = _spec({"stem": (2, 4, 4), "stage1": (3, 4, 4)})
    _built(m, spec, spec)
    f = Features(maps={"stem": torch.randn(2, 2, 4, 4), "stage1": torch.randn(2, 3, 4, 4)})
    g = Features(maps={k: v + 1 for k, v in f.maps.items()})
    assert m(f, g, STEP)["fsp"].item() == 0.0
    assert m.init_stage_loss(f, g, STEP)["fsp"].item() > 0
    obj = DistillationObjective.from_names("fsp")
    assert obj.weights == {"fsp": 50.0} and obj.ce_weight == 1.0
    assert obj.needs().student.maps == ("all",) and not obj.needs().student.preact
    assert obj.init_stage_methods() == ["fsp"]


def test_rejects_bad_hyperparameters_and_single_layer():
    with pytest.raises(ValueError, match="distill nothing"):
        FSP(init_epochs=0)
    with pytest.raises(ValueError, match="init_epochs"):
        FSP(init_epochs=-2)
    spec = _spec({"stem": (2, 4, 4), "stage1": (3, 4, 4)})
    with pytest.raises(ValueError, match="at least two layers"):
        _built(FSP(layers="last"), spec, spec)


# -- 2. gradients -----------------------------------------------------------------------------------------------
def test_gradcheck_double_and_gradient_only_to_student():
    g = torch.Generator().manual_seed(1)
    s = [
        torch.randn(2, c, h, h, generator=g, dtype=torch.double, requires_grad=True)
        for c, h in ((2, 4), (3, 2))
    ]
    t = [torch.randn(2, c, h, h, generator=g, dtype=torch.double) for c, h in ((2, 4), (3, 4))]
    assert torch.autograd.gradcheck(lambda a, b: fsp_loss([a, b], t), tuple(s))
    t_raw = [x.clone().requires_grad_(True) for x in t]
    fsp_loss(s, [x.detach() for x in t_raw]).backward()  # teacher features arrive detached
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t_raw)
    assert list(FSP().parameters()) == []  # nothing trainable of its own


# -- 3. shapes from real zoo pairs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("teacher,student", [("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20")])
def test_zoo_pairs_with_equal_channels(teacher, student):
    s_spec, t_spec = _zoo_spec(student), _zoo_spec(teacher)
    m = _built(FSP(main_stage_loss=True), s_spec, t_spec)
    assert m.student_layers == ["stem", "stage1", "stage2", "stage3"]
    s = Features(maps={n: torch.randn(2, *s_spec.maps[n], requires_grad=True) for n in m.student_layers})
    t = Features(maps={n: torch.randn(2, *t_spec.maps[n]) for n in m.teacher_layers})
    loss = m(s, t, STEP)["fsp"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(v.grad is not None for v in s.maps.values())


@pytest.mark.parametrize(
    "teacher,student,fragment",
    [
        ("resnet32x4", "shufflenetv2", "student stem has 24 channels, teacher stem has 32"),
        ("vgg13", "mobilenetv2", "student stem has 16 channels, teacher stem has 64"),
        ("wrn_40_2", "wrn_40_1", "student stage1 has 16 channels, teacher stage1 has 32"),
    ],
)
def test_channel_mismatch_is_a_clear_error(teacher, student, fragment):
    with pytest.raises(ValueError, match="equal channel counts") as err:
        _built(FSP(), _zoo_spec(student), _zoo_spec(teacher))
    assert fragment in str(err.value)


def test_spatial_sizes_may_differ_between_networks():
    s_spec = _spec({"stem": (4, 16, 16), "stage1": (6, 8, 8)})
    t_spec = _spec({"stem": (4, 32, 32), "stage1": (6, 8, 8)})
    m = _built(FSP(main_stage_loss=True), s_spec, t_spec)
    s = Features(maps={"stem": torch.randn(2, 4, 16, 16), "stage1": torch.randn(2, 6, 8, 8)})
    t = Features(maps={"stem": torch.randn(2, 4, 32, 32), "stage1": torch.randn(2, 6, 8, 8)})
    assert torch.isfinite(m(s, t, STEP)["fsp"])


# -- 4. a few real training steps ---------------------------------------------------------------------------------
def test_training_steps_decrease_loss(real_batch):
    _, batch = real_batch
    torch.manual_seed(0)
    student = create_cifar_model("resnet8", num_labels=10).train()
    teacher, lr = _teacher()
    s_tap, t_tap = feature_tap(student), feature_tap(teacher)
    m = _built(FSP(), _zoo_spec("resnet8"), _model_spec(teacher))
    req = TapRequest(maps=tuple(m.student_layers))
    with torch.no_grad():
        t_feats = t_tap(teacher, batch["pixel_values"], req)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = m.init_stage_loss(s_tap(student, batch["pixel_values"], req), t_feats, STEP)["fsp"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# -- the init stage inside the trainer -------------------------------------------------------------------------------
def test_init_stage_in_trainer(tmp_path, real_batch):
    split, _ = real_batch
    torch.manual_seed(0)
    student = create_cifar_model("resnet8", num_labels=10)
    teacher = create_cifar_model("resnet20", num_labels=10)
    obj = DistillationObjective.from_names("fsp", method_kwargs={"fsp": {"init_epochs": 1}})
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        max_steps=2,
        learning_rate=0.05,
        optim="sgd",
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    t = DistillationTrainer(
        model=student,
        teacher=teacher,
        objective=obj,
        args=args,
        train_dataset=split.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
    )
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    t.run_init_stage()
    assert bool(t.model.init_stage_done)
    changed = [k for k, v in student.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("conv1.weight") for k in changed)
    # the classifier gets no gradient from FSP: it stays as it was
    assert not any(k.startswith(("fc.", "linear.", "classifier.")) for k in changed), changed
    rec = [h for h in t.state.log_history if "init_stage_loss" in h]
    assert len(rec) == 1 and rec[0]["init_stage_steps"] == 4 and rec[0]["init_stage_loss"] > 0
    t.train()
    assert sum("init_stage_loss" in h for h in t.state.log_history) == 1
    main = [h for h in t.state.log_history if "loss_fsp" in h]
    assert main and all(h["loss_fsp"] == 0.0 for h in main)  # RepDistiller: CE only in the main stage
