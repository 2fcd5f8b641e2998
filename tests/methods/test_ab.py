import numpy as np
import pytest
import torch

import hf_distill.methods.ab  # noqa: F401  (registers "ab")
from hf_distill.methods import DistillationObjective, Features, FeatureSpec, InitStage, StepInfo
from hf_distill.methods.ab import AB, ab_criterion, ab_loss
from tests.methods._common import (
    PRETRAINED_TEACHER,
    built,
    check_init_stage_once_then_zero_term,
    check_loss_on_random_maps,
    cifar_teacher,
    init_stage_trainer,
    np_block_pool,
    training_losses,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(2, dtype=torch.long))


# -- test-only helpers ------------------------------------------------------------------------------------------
def _np_criterion(s: np.ndarray, t: np.ndarray, m: float) -> float:
    """The AB criterion written element by element from the paper's formula."""
    total = 0.0
    for sv, tv in zip(s.ravel().tolist(), t.ravel().tolist()):
        if tv <= 0 and sv > -m:
            total += (sv + m) ** 2
        elif tv > 0 and sv <= m:
            total += (sv - m) ** 2
    return total


def _np_ab(s_maps, t_maps, m=1.0) -> float:
    n = len(s_maps)
    weights = [2.0 ** (i - n + 1) for i in range(n)]
    batch = s_maps[0].shape[0]
    return sum(w * _np_criterion(s, t, m) for w, s, t in zip(weights, s_maps, t_maps)) / batch * 3 / 1000


def _spec(shapes: dict[str, tuple[int, ...]]) -> FeatureSpec:
    return FeatureSpec(names=tuple(shapes), maps=dict(shapes))


# -- 1. values against independent computations ------------------------------------------------------------------
def test_criterion_hand_values():
    s = torch.tensor([-2.0, -0.5, 0.5, 2.0, 0.5, -0.5, 0.0])
    t = torch.tensor([-1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 0.0])
    # by hand, m = 1: 0 (already below -m), 0.5^2, 0.5^2, 0 (already above m), 1.5^2, 1.5^2, 1^2 (t = 0 is "off")
    assert ab_criterion(s, t, 1.0).item() == pytest.approx(0.25 + 0.25 + 2.25 + 2.25 + 1.0)
    assert ab_criterion(s, t, 2.0).item() == pytest.approx(_np_criterion(s.numpy(), t.numpy(), 2.0))


def test_ab_loss_matches_numpy_reference():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(3, 4, 5, 5, generator=g) * 2 for _ in range(3)]
    t = [torch.randn(3, 4, 5, 5, generator=g) for _ in range(3)]
    want = _np_ab([x.numpy() for x in s], [x.numpy() for x in t], 1.0)
    assert ab_loss(s, t, 1.0).item() == pytest.approx(want, rel=1e-5)
    # layer weights: deepest 1, then 1/2, 1/4 (RepDistiller 2^(i-n+1))
    per = [_np_criterion(a.numpy(), b.numpy(), 1.0) for a, b in zip(s, t)]
    assert want == pytest.approx((0.25 * per[0] + 0.5 * per[1] + per[2]) / 3 * 0.003, rel=1e-9)


def test_method_uses_connectors_and_pools_to_smaller_size():
    """Connector (1x1 conv + BN, eval BN = identity at init) and pooling, reproduced with numpy."""
    s_spec = _spec({"stem": (4, 8, 8), "stage1": (3, 8, 8), "stage2": (5, 4, 4)})
    t_spec = _spec({"stem": (4, 8, 8), "stage1": (6, 4, 4), "stage2": (5, 2, 2)})
    m = built(AB(main_stage_loss=True), s_spec, t_spec).eval()
    assert isinstance(m.connectors[0], torch.nn.Sequential)  # 3 -> 6 channels
    assert isinstance(m.connectors[1], torch.nn.Identity)  # 5 == 5 channels (RepDistiller: identity)
    g = torch.Generator().manual_seed(1)
    s1, s2 = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    t1, t2 = torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 5, 2, 2, generator=g)
    out = m(Features(maps={"stage1": s1, "stage2": s2}), Features(maps={"stage1": t1, "stage2": t2}), STEP)

    def pool2(x):  # 2x2 block means
        return np_block_pool(x, x.shape[2] // 2, x.shape[3] // 2)

    w = m.connectors[0][0].weight.detach().numpy()[:, :, 0, 0]  # (6, 3)
    eps = m.connectors[0][1].eps
    r1 = np.einsum("oc,bchw->bohw", w, pool2(s1.numpy())) / np.sqrt(1 + eps)
    want = _np_ab([r1, pool2(s2.numpy())], [t1.numpy(), t2.numpy()])
    assert out["ab"].item() == pytest.approx(want, rel=1e-5)


def test_main_stage_is_zero_by_default_and_init_stage_configured():
    m = AB()
    assert m.init_stage == InitStage(epochs=30, learning_rate=None, train_student=True)
    assert AB(init_epochs=3).init_stage.epochs == 3
    assert AB(init_epochs=0, main_stage_loss=True).init_stage is None
    spec = _spec({"stem": (4, 4, 4), "stage1": (4, 4, 4)})
    built(m, spec, spec)
    f = Features(maps={"stage1": torch.randn(2, 4, 4, 4)})
    assert m(f, f, STEP)["ab"].item() == 0.0
    assert m.init_stage_loss(Features(maps={"stage1": f.maps["stage1"] * 0}), f, STEP)["ab"].item() > 0
    obj = DistillationObjective.from_names("ab")
    assert obj.weights == {"ab": 1.0} and obj.ce_weight == 1.0
    assert obj.needs().student.preact and obj.needs().teacher.preact
    assert obj.init_stage_methods() == ["ab"]


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="margin"):
        AB(margin=0)
    with pytest.raises(ValueError, match="distill nothing"):
        AB(init_epochs=0)
    with pytest.raises(ValueError, match="connector"):
        AB(connector="conv3x3")
    with pytest.raises(ValueError, match="init_epochs"):
        AB(init_epochs=-1)


# -- 2. gradients -----------------------------------------------------------------------------------------------
def test_gradcheck_double():
    g = torch.Generator().manual_seed(2)
    s = [torch.randn(2, 3, 3, 3, generator=g, dtype=torch.double, requires_grad=True) for _ in range(2)]
    t = [torch.randn(2, 3, 3, 3, generator=g, dtype=torch.double) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda a, b: ab_loss([a, b], t, 1.0), tuple(s))


def test_gradients_reach_student_and_connectors_only():
    s_spec = _spec({"stem": (4, 8, 8), "stage1": (3, 8, 8), "stage2": (5, 4, 4)})
    t_spec = _spec({"stem": (4, 8, 8), "stage1": (6, 8, 8), "stage2": (7, 4, 4)})
    m = built(AB(main_stage_loss=True), s_spec, t_spec).train()
    s = {
        "stage1": torch.randn(4, 3, 8, 8, requires_grad=True),
        "stage2": torch.randn(4, 5, 4, 4, requires_grad=True),
    }
    t_raw = {
        "stage1": torch.randn(4, 6, 8, 8, requires_grad=True),
        "stage2": torch.randn(4, 7, 4, 4, requires_grad=True),
    }
    t = Features(maps=t_raw).detach()  # as the trainer hands them over
    m.init_stage_loss(Features(maps=s), t, STEP)["ab"].backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in s.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.connectors.parameters())
    assert all(v.grad is None for v in t_raw.values())
    # even a teacher tensor that requires grad gets none: only its sign is used
    t_live = Features(maps=t_raw)
    m.zero_grad()
    m.init_stage_loss(Features(maps=s), t_live, STEP)["ab"].backward()
    assert all(v.grad is None for v in t_raw.values())


# -- 3. mismatched shapes from real zoo pairs ---------------------------------------------------------------------
def test_connectors_map_student_channels_to_the_teachers():
    s_spec, t_spec = zoo_spec("shufflenetv2"), zoo_spec("resnet32x4")  # a cross-architecture pair
    m = built(AB(main_stage_loss=True), s_spec, t_spec)
    assert len(m.connectors) == len(m.student_layer_names) == len(m.teacher_layer_names)
    for conn, sn, tn in zip(m.connectors, m.student_layer_names, m.teacher_layer_names):
        cs, ct = s_spec.maps[sn][0], t_spec.maps[tn][0]
        if cs == ct:
            assert isinstance(conn, torch.nn.Identity)
        else:
            assert conn[0].in_channels == cs and conn[0].out_channels == ct
    check_loss_on_random_maps(m, s_spec, t_spec, "ab", STEP)


def test_layer_count_mismatch_is_a_clear_error():
    s_spec, t_spec = zoo_spec("resnet20"), zoo_spec("vgg13")  # 3 stages vs 4
    with pytest.raises(ValueError, match="--ab-student-layers"):
        built(AB(), s_spec, t_spec)
    m = built(AB(teacher_layers="stage1,stage2,stage3"), s_spec, t_spec)
    assert m.teacher_layer_names == ["stage1", "stage2", "stage3"]
    # the hyperparameters are reported as given, not overwritten by the resolved layer names
    assert (
        m.hparams()["student_layers"] == "stages" and m.hparams()["teacher_layers"] == "stage1,stage2,stage3"
    )


# -- 4. a few real training steps ---------------------------------------------------------------------------------
def test_training_steps_decrease_loss(train_batch):
    lr = 0.05 if PRETRAINED_TEACHER else 0.01
    # the init-stage term alone, against the pretrained teacher
    losses = training_losses(
        AB(connector="always"),
        train_batch,
        lr,
        steps=8,
        teacher=cifar_teacher(),
        scale=1.0,
        terms=("ab",),
        init_stage=True,
        final=False,
    )
    assert losses[-1] < 0.8 * losses[0], losses


# -- the init stage inside the trainer -------------------------------------------------------------------------------
def test_init_stage_in_trainer(tmp_path, tiny):
    t = init_stage_trainer(tmp_path, tiny, "ab", {"init_epochs": 1, "connector": "always"})
    student = t.model.student
    ab = t.model.objective.methods["ab"]
    conn_before = {k: v.clone() for k, v in ab.connectors.state_dict().items()}
    conv_before = student.model.state_dict()
    conv_before = {k: v.clone() for k, v in conv_before.items()}
    t.run_init_stage()
    assert bool(t.model.init_stage_done)
    assert any(not torch.equal(v, conn_before[k]) for k, v in ab.connectors.state_dict().items())
    changed = [k for k, v in student.model.state_dict().items() if not torch.equal(v, conv_before[k])]
    assert any("weight" in k for k in changed)
    check_init_stage_once_then_zero_term(t, "ab")
