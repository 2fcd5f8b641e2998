import functools
import math

import numpy as np
import pytest
import torch

import hf_distill.losses.nst  # noqa: F401  (registers "nst")
from hf_distill.data import collate, prepare_split
from hf_distill.losses import DataInfo, DistillationObjective, Features, FeatureSpec, StepInfo
from hf_distill.losses.base import resolve_selectors
from hf_distill.losses.nst import NST, nst_loss, parse_layers, pool_to_common_size
from hf_distill.models.modeling_cifar import create_cifar_model
from hf_distill.models.taps import TapRequest, feature_tap
from tests.conftest import TEACHER_DIR
from tests.helpers import CIFAR_SPEC

DATA = DataInfo(num_samples=64, num_classes=10)
STEP = StepInfo(labels=torch.zeros(2, dtype=torch.long))


# -- test-only helpers ------------------------------------------------------------------------------------------
def _np_pool(x: np.ndarray, size: int) -> np.ndarray:
    b, c, h, w = x.shape
    k = h // size
    return x.reshape(b, c, size, k, size, k).mean(axis=(3, 5))


def _np_nst_layer(s: np.ndarray, t: np.ndarray, degree: int = 2, c: float = 0.0) -> float:
    """Squared MMD of the normalized channel vectors, by explicit loops over samples and channel pairs."""
    size = min(s.shape[2], t.shape[2])
    s, t = _np_pool(s, size), _np_pool(t, size)
    total = 0.0
    for n in range(s.shape[0]):
        fs = [v / np.linalg.norm(v) for v in s[n].reshape(s.shape[1], -1)]
        ft = [v / np.linalg.norm(v) for v in t[n].reshape(t.shape[1], -1)]

        def mean_k(a, b):
            return sum((float(x @ y) + c) ** degree for x in a for y in b) / (len(a) * len(b))

        total += mean_k(ft, ft) + mean_k(fs, fs) - 2 * mean_k(fs, ft)
    return total / s.shape[0]


def _model_spec(model, selectors=("stages",)) -> FeatureSpec:
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


def _built(method: NST, s_spec: FeatureSpec, t_spec: FeatureSpec) -> NST:
    method.resolve_layers(s_spec.names, t_spec.names)
    method.build(s_spec, t_spec, DATA)
    return method


def _teacher():
    """The pretrained CIFAR-10 resnet56 when it is there (realistic activations), else a random zoo resnet20."""
    if (TEACHER_DIR / "config.json").exists():
        from hf_distill.models.loading import load_model

        return load_model(str(TEACHER_DIR), role="teacher").eval()
    return create_cifar_model("resnet20", num_labels=10).eval()


# -- 1. values against independent computations ------------------------------------------------------------------
def test_nst_hand_value():
    # one sample; student channels e1, e2 over two positions, teacher one channel e1 (norms already 1):
    # mean k(t,t) = 1, mean k(s,s) = (1 + 0 + 0 + 1)/4 = 0.5, mean k(s,t) = (1 + 0)/2 = 0.5 -> 1 + 0.5 - 1 = 0.5
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    t = torch.tensor([[[[3.0, 0.0]]]])  # (1, 1, 1, 2), normalized to e1
    assert nst_loss([s], [t]).item() == pytest.approx(0.5)
    # with c = 1, degree 3: k = (x.y + 1)^3 -> 8 + (8 + 1 + 1 + 8)/4 - 2 * (8 + 1)/2 = 3.5
    assert nst_loss([s], [t], degree=3, c=1.0).item() == pytest.approx(3.5)


def test_nst_matches_numpy_reference_with_pooling_and_channel_mismatch():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 6, 2, 2, generator=g)]
    t = [torch.randn(3, 7, 4, 4, generator=g), torch.randn(3, 5, 4, 4, generator=g)]
    want = sum(_np_nst_layer(a.numpy(), b.numpy()) for a, b in zip(s, t))
    assert nst_loss(s, t).item() == pytest.approx(want, rel=1e-5)
    m = _built(
        NST(),
        FeatureSpec(names=("stem", "stage1", "stage2"), maps={"stage1": (4, 8, 8), "stage2": (6, 2, 2)}),
        FeatureSpec(names=("stem", "stage1", "stage2"), maps={"stage1": (7, 4, 4), "stage2": (5, 4, 4)}),
    )
    out = m(
        Features(maps={"stage1": s[0], "stage2": s[1]}), Features(maps={"stage1": t[0], "stage2": t[1]}), STEP
    )
    assert out["nst"].item() == pytest.approx(want, rel=1e-5)
    want3 = sum(_np_nst_layer(a.numpy(), b.numpy(), 3, 0.5) for a, b in zip(s, t))
    assert nst_loss(s, t, 3, 0.5).item() == pytest.approx(want3, rel=1e-5)


def test_properties_zero_for_identical_and_channel_permutation_invariant():
    x = torch.randn(2, 5, 4, 4)
    assert nst_loss([x], [x]).abs().item() < 1e-6
    assert nst_loss([x], [x[:, torch.randperm(5)] * 3.0]).abs().item() < 1e-6  # scale too: normalized
    assert nst_loss([x], [torch.randn(2, 5, 4, 4)]).item() > 0


def test_defaults_and_validation():
    obj = DistillationObjective.from_names("nst")
    assert obj.weights == {"nst": 50.0} and obj.ce_weight == 1.0
    assert obj.needs().student.maps == ("stages",) and not obj.needs().student.preact
    assert obj.init_stage_methods() == []
    assert NST().init_stage is None and list(NST().parameters()) == []
    with pytest.raises(ValueError, match="degree"):
        NST(degree=0)
    with pytest.raises(ValueError, match="c must be"):
        NST(c=-1.0)
    assert parse_layers("stage2, -1", "x") == ("stage2", -1)
    with pytest.raises(ValueError, match="selects no feature layer"):
        parse_layers(" , ", "--nst-layers")


def test_pool_to_common_size_non_square():
    a, b = pool_to_common_size(torch.randn(1, 2, 8, 4), torch.randn(1, 3, 4, 8))
    assert a.shape == (1, 2, 4, 4) and b.shape == (1, 3, 4, 4)


# -- 2. gradients -----------------------------------------------------------------------------------------------
def test_gradcheck_double_and_gradient_only_to_student():
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.double, requires_grad=True)]
    t = [torch.randn(2, 5, 2, 2, generator=g, dtype=torch.double)]
    assert torch.autograd.gradcheck(lambda a: nst_loss([a], t, 2, 0.0), tuple(s))
    t_raw = t[0].clone().requires_grad_(True)
    nst_loss(s, [t_raw.detach()]).backward()  # teacher features arrive detached
    assert s[0].grad is not None and s[0].grad.abs().sum() > 0 and t_raw.grad is None


# -- 3. shapes from real zoo pairs ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "teacher,student",
    [
        ("resnet32x4", "shufflenetv2"),
        ("vgg13", "mobilenetv2"),
        ("wrn_40_2", "wrn_16_2"),
        ("resnet56", "resnet20"),
    ],
)
def test_zoo_pairs(teacher, student):
    s_spec, t_spec = _zoo_spec(student), _zoo_spec(teacher)
    m = _built(NST(), s_spec, t_spec)
    s = Features(maps={n: torch.randn(2, *s_spec.maps[n], requires_grad=True) for n in m.student_layers})
    t = Features(maps={n: torch.randn(2, *t_spec.maps[n]) for n in m.teacher_layers})
    loss = m(s, t, STEP)["nst"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(v.grad is not None for v in s.maps.values())


def test_layer_count_mismatch_is_a_clear_error():
    s_spec, t_spec = _zoo_spec("mobilenetv2"), _zoo_spec("resnet32x4")  # 4 stages vs 3
    with pytest.raises(ValueError, match="--nst-layers"):
        _built(NST(), s_spec, t_spec)
    m = _built(NST(layers="stage2,stage3,stage4", layers_teacher="stages"), s_spec, t_spec)
    assert m.student_layers == ["stage2", "stage3", "stage4"]
    assert m.teacher_layers == ["stage1", "stage2", "stage3"]
    # the hyperparameters are reported as given, not overwritten by the resolved layer names
    assert m.hparams()["layers"] == "stage2,stage3,stage4" and m.hparams()["layers_teacher"] == "stages"


# -- 4. a few real training steps ---------------------------------------------------------------------------------
def test_training_steps_decrease_loss(subset_train):
    split = prepare_split(subset_train, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=16)
    batch = collate([split.dataset[i] for i in range(16)])
    torch.manual_seed(0)
    student = create_cifar_model("resnet8", num_labels=10).train()
    teacher = _teacher()
    s_tap, t_tap = feature_tap(student), feature_tap(teacher)
    m = _built(NST(), _zoo_spec("resnet8"), _model_spec(teacher))
    req = TapRequest(maps=tuple(m.student_layers))
    with torch.no_grad():
        t_feats = t_tap(teacher, batch["pixel_values"], req)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = m(s_tap(student, batch["pixel_values"], req), t_feats, STEP)["nst"]
        # the objective would scale it by the default weight 50: step on that scale
        opt.zero_grad()
        (NST.default_weight * loss).backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
