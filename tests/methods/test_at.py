import numpy as np
import pytest
import torch

from hf_distill.methods import Features, FeatureSpec, StepInfo, resolve_objective
from hf_distill.methods.at import AT, at_loss
from hf_distill.methods.maps import parse_selectors
from hf_distill.run.config import parse_method_flags
from tests.methods._common import (
    built,
    np_block_pool,
    random_features,
    training_losses,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(2, dtype=torch.long))


def _np_at(f, p=2.0):
    """Attention map with numpy: mean over channels of f^p, flattened, divided by its L2 norm."""
    a = (f**p).mean(axis=1).reshape(f.shape[0], -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_value_matches_numpy_with_pooling_and_layer_sum():
    rng = np.random.default_rng(0)
    s = [rng.random((2, 3, 4, 4)), rng.random((2, 2, 2, 2))]
    t = [rng.random((2, 5, 2, 2)), rng.random((2, 4, 4, 4))]  # pair 1: student larger; pair 2: teacher larger
    per_layer = [
        np.mean((_np_at(np_block_pool(s[0], 2, 2)) - _np_at(t[0])) ** 2),
        np.mean((_np_at(s[1]) - _np_at(np_block_pool(t[1], 2, 2))) ** 2),
    ]
    got = at_loss([torch.tensor(x) for x in s], [torch.tensor(x) for x in t])
    assert got.item() == pytest.approx(sum(per_layer), rel=1e-10)
    got_mean = at_loss([torch.tensor(x) for x in s], [torch.tensor(x) for x in t], reduction="mean")
    assert got_mean.item() == pytest.approx(sum(per_layer) / 2, rel=1e-10)


def test_concrete_value():
    # student: one 1x2 map [1, 0] -> at = [1, 0]; teacher [1, 1] -> at = [1/sqrt2, 1/sqrt2]
    fs = torch.tensor([[[[1.0, 0.0]]]])
    ft = torch.tensor([[[[1.0, 1.0]]]])
    expected = ((1 - 2**-0.5) ** 2 + 0.5) / 2
    assert at_loss([fs], [ft]).item() == pytest.approx(expected, rel=1e-6)
    assert at_loss([ft], [ft * 3]).item() == pytest.approx(0.0, abs=1e-12)


def test_gradcheck_and_gradient_only_to_student():
    s = [(torch.rand(2, 3, 4, 4, dtype=torch.double) + 0.1).requires_grad_(True)]
    t = [torch.rand(2, 2, 2, 2, dtype=torch.double)]
    assert torch.autograd.gradcheck(lambda x: at_loss([x], t), (s[0],))
    at_loss(s, t).backward()
    assert s[0].grad is not None and s[0].grad.abs().sum() > 0 and t[0].grad is None
    assert len(list(AT().parameters())) == 0


def test_layer_count_mismatch_is_a_clear_error_and_selection_fixes_it():
    s_spec, t_spec = zoo_spec("resnet20"), zoo_spec("vgg13")  # 3 stages vs 4
    with pytest.raises(
        ValueError, match=r"3 student and 4 teacher.*--at-student-layers / --at-teacher-layers"
    ):
        built(AT(), s_spec, t_spec)
    m = built(AT(teacher_layers="stage1,stage2,-1"), s_spec, t_spec)
    assert m.teacher_layer_names == ["stage1", "stage2", "stage4"]
    loss = m(random_features(s_spec, 2), random_features(t_spec, 2, seed=1), STEP)["at"]
    assert torch.isfinite(loss)
    flags = parse_method_flags(["--at-teacher-layers", "stage1,stage2,-1"], ["at"])
    assert AT(**flags["at"]).needs().teacher.maps == ("stage1", "stage2", -1)


def test_option_validation_and_defaults():
    assert parse_selectors("1, stage2,-1", "x") == (1, "stage2", -1)
    with pytest.raises(ValueError, match="empty"):
        AT(student_layers="stage1,,stage2")
    with pytest.raises(ValueError, match="layer_reduction"):
        AT(layer_reduction="max")
    with pytest.raises(ValueError, match="p must be"):
        AT(p=0)
    tokens = FeatureSpec(names=("h0", "h1"), maps={"h1": (5, 8)})
    with pytest.raises(ValueError, match=r"convolutional \(C, H, W\)"):
        built(AT(), tokens, tokens)
    spec = resolve_objective("at")
    assert spec.weights == (1000.0,) and spec.ce_weight == 1.0
    assert AT().hparams() == {
        "p": 2.0,
        "student_layers": "stages",
        "teacher_layers": "",
        "layer_reduction": "sum",
    }


def test_forward_reads_the_resolved_layers():
    spec = FeatureSpec(names=("stem", "a", "b"), maps={"a": (2, 4, 4), "b": (2, 2, 2)})
    m = built(AT(), spec, spec)
    f = random_features(spec, 2)
    g = random_features(spec, 2, seed=3)
    expected = at_loss([f.maps["a"], f.maps["b"]], [g.maps["a"], g.maps["b"]])
    assert torch.equal(m(f, g, STEP)["at"], expected)
    assert m(Features(maps=f.maps), Features(maps=f.maps), STEP)["at"].item() == pytest.approx(0.0, abs=1e-12)


def test_training_steps_decrease_the_loss(batch):
    losses = training_losses(AT(), batch, lr=0.01)
    assert losses[-1] < 0.8 * losses[0], losses
