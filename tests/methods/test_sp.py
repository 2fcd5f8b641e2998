import numpy as np
import pytest
import torch

from hf_distill.methods import Features, FeatureSpec, StepInfo, resolve_objective
from hf_distill.methods.sp import SP, similarity_matrix, sp_loss
from tests.methods._common import (
    built,
    check_gather_matches_full_batch,
    random_features,
    training_losses,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(4, dtype=torch.long))


def _np_sp(fs, ft):
    """Similarity-preserving loss with numpy: row-normalized Gram matrices, squared Frobenius distance / B^2."""
    b = fs.shape[0]

    def g(f):
        f = f.reshape(b, -1)
        m = f @ f.T
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    return float(((g(fs) - g(ft)) ** 2).sum() / b**2)


def test_value_matches_numpy_for_different_shapes():
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 5, 3, 1))
    got = sp_loss([torch.tensor(fs)], [torch.tensor(ft)])
    assert got.item() == pytest.approx(_np_sp(fs, ft), rel=1e-10)
    # several pairs are summed (RepDistiller sums its list) or averaged
    fs2, ft2 = rng.normal(size=(4, 2)), rng.normal(size=(4, 7))
    two = [torch.tensor(fs), torch.tensor(fs2)], [torch.tensor(ft), torch.tensor(ft2)]
    assert sp_loss(*two).item() == pytest.approx(_np_sp(fs, ft) + _np_sp(fs2, ft2), rel=1e-10)
    assert sp_loss(*two, reduction="mean").item() == pytest.approx((_np_sp(fs, ft) + _np_sp(fs2, ft2)) / 2)


def test_concrete_value():
    # student rows e1, e2 (orthogonal): G_s = I. Teacher rows both (1, 0): G = all ones, rows normalized to 1/sqrt2.
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ft = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(similarity_matrix(fs), torch.eye(2))
    expected = (2 * (1 - 2**-0.5) ** 2 + 2 * 0.5) / 4
    assert sp_loss([fs], [ft]).item() == pytest.approx(expected, rel=1e-6)


def test_gradcheck_and_gradient_only_to_student():
    fs = torch.randn(4, 3, 2, 2, dtype=torch.double, requires_grad=True)
    ft = torch.randn(4, 6, 2, 2, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x: sp_loss([x], [ft]), (fs,))
    sp_loss([fs], [ft]).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0 and ft.grad is None
    assert len(list(SP().parameters())) == 0


def test_last_maps_match_the_reference():
    s_spec, t_spec = zoo_spec("shufflenetv2"), zoo_spec("resnet32x4")  # a cross-architecture pair
    m = built(SP(), s_spec, t_spec)
    assert m.student_layer_names == [s_spec.names[-1]] and m.teacher_layer_names == [t_spec.names[-1]]
    fs, ft = random_features(s_spec, 4), random_features(t_spec, 4, seed=1)
    loss = m(fs, ft, STEP)["sp"]
    expected = _np_sp(fs.maps[m.student_layer_names[0]].numpy(), ft.maps[m.teacher_layer_names[0]].numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_layer_selection_and_errors():
    s_spec, t_spec = zoo_spec("resnet20"), zoo_spec("vgg13")
    with pytest.raises(ValueError, match=r"--sp-student-layers / --sp-teacher-layers"):
        built(SP(student_layers="stages"), s_spec, t_spec)
    m = built(SP(student_layers="stage2,stage3", teacher_layers="2,-1"), s_spec, t_spec)
    assert m.teacher_layer_names == ["stage2", "stage4"]
    # token maps (B, N, D) work too: the Gram matrix only needs a batch dimension
    tokens = FeatureSpec(names=("h0", "h1"), maps={"h1": (5, 8)})
    m = built(SP(), tokens, tokens)
    f = random_features(tokens, 4)
    assert m(f, Features(maps=f.maps), STEP)["sp"].item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="layer_reduction"):
        SP(layer_reduction="none")


def test_defaults():
    spec = resolve_objective("sp")
    assert spec.weights == (3000.0,) and spec.ce_weight == 1.0
    assert SP().hparams() == {
        "student_layers": "last",
        "teacher_layers": "",
        "layer_reduction": "sum",
        "gather": False,
    }


def test_gather_single_process_equals_local():
    s_spec, t_spec = zoo_spec("resnet20"), zoo_spec("resnet56")
    fs, ft = random_features(s_spec, 4), random_features(t_spec, 4, seed=1)
    a = built(SP(gather=True), s_spec, t_spec)(fs, ft, STEP)["sp"]
    b = built(SP(gather=False), s_spec, t_spec)(fs, ft, STEP)["sp"]
    assert torch.equal(a, b)


@pytest.mark.slow
def test_gather_two_processes_equals_full_batch():
    spec_s = FeatureSpec(names=("stem", "last"), maps={"last": (3, 2, 2)})
    spec_t = FeatureSpec(names=("stem", "last"), maps={"last": (5, 2, 2)})
    check_gather_matches_full_batch(SP, {}, spec_s, spec_t, batch=8)


def test_training_steps_decrease_the_loss(batch):
    losses = training_losses(SP(), batch, lr=0.01, steps=4)
    assert losses[-1] < 0.5 * losses[0], losses
