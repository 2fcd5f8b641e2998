import numpy as np
import pytest
import torch

import hf_distill.methods.fsp  # noqa: F401  (registers "fsp")
from hf_distill.methods import DistillationObjective, Features, FeatureSpec, InitStage, StepInfo
from hf_distill.methods.fsp import FSP, fsp_loss, fsp_matrix
from tests.methods._common import (
    PRETRAINED_TEACHER,
    built,
    check_init_stage_once_then_zero_term,
    cifar_teacher,
    init_stage_trainer,
    np_block_pool,
    training_losses,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(2, dtype=torch.long))


# -- test-only helpers ------------------------------------------------------------------------------------------
def _np_fsp(bottom: np.ndarray, top: np.ndarray) -> np.ndarray:
    """G[b, j, i] = mean over positions of top[b, j] * bottom[b, i], by explicit loops."""
    size = min(bottom.shape[2], top.shape[2])
    bottom, top = np_block_pool(bottom, size), np_block_pool(top, size)
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


def _spec(shapes: dict[str, tuple[int, ...]]) -> FeatureSpec:
    return FeatureSpec(names=tuple(shapes), maps=dict(shapes))


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
    m = built(
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
    built(m, spec, spec)
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
        built(FSP(student_layers="last"), spec, spec)


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


@pytest.mark.parametrize(
    "teacher,student,fragment",
    [
        (
            "resnet32x4",
            "shufflenetv2",
            "the student's layer 'stem' has 24 channels, the teacher's layer 'stem' has 32",
        ),
        (
            "vgg13",
            "mobilenetv2",
            "the student's layer 'stem' has 16 channels, the teacher's layer 'stem' has 64",
        ),
        (
            "wrn_40_2",
            "wrn_40_1",
            "the student's layer 'stage1' has 16 channels, the teacher's layer 'stage1' has 32",
        ),
    ],
)
def test_channel_mismatch_is_a_clear_error(teacher, student, fragment):
    with pytest.raises(ValueError, match="equal channel counts") as err:
        built(FSP(), zoo_spec(student), zoo_spec(teacher))
    assert fragment in str(err.value)


def test_spatial_sizes_may_differ_between_networks():
    s_spec = _spec({"stem": (4, 16, 16), "stage1": (6, 8, 8)})
    t_spec = _spec({"stem": (4, 32, 32), "stage1": (6, 8, 8)})
    m = built(FSP(main_stage_loss=True), s_spec, t_spec)
    s = Features(maps={"stem": torch.randn(2, 4, 16, 16), "stage1": torch.randn(2, 6, 8, 8)})
    t = Features(maps={"stem": torch.randn(2, 4, 32, 32), "stage1": torch.randn(2, 6, 8, 8)})
    # the numpy reference pools each pair to the smaller size by blocks (the teacher's 32x32 stem to 8x8)
    expected = _np_fsp_loss(
        [v.double().numpy() for v in s.maps.values()], [v.double().numpy() for v in t.maps.values()]
    )
    assert m(s, t, STEP)["fsp"].item() == pytest.approx(expected, rel=1e-5)


# -- 4. a few real training steps ---------------------------------------------------------------------------------
def test_training_steps_decrease_loss(train_batch):
    lr = 0.05 if PRETRAINED_TEACHER else 0.01
    # the init-stage term alone, against the pretrained teacher
    losses = training_losses(
        FSP(),
        train_batch,
        lr,
        steps=8,
        teacher=cifar_teacher(),
        scale=1.0,
        terms=("fsp",),
        init_stage=True,
        final=False,
    )
    assert losses[-1] < 0.8 * losses[0], losses


# -- the init stage inside the trainer -------------------------------------------------------------------------------
def test_init_stage_in_trainer(tmp_path, tiny):
    t = init_stage_trainer(tmp_path, tiny, "fsp", {"init_epochs": 1})
    student = t.model.student
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    t.run_init_stage()
    assert bool(t.model.init_stage_done)
    changed = [k for k, v in student.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("conv1.weight") for k in changed)
    # the classifier gets no gradient from FSP: it stays as it was
    assert not any(k.startswith(("fc.", "linear.", "classifier.")) for k in changed), changed
    check_init_stage_once_then_zero_term(t, "fsp")
