import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_distill.methods import DistillationObjective, StepInfo
from hf_distill.methods.kd import kd_loss
from hf_distill.methods.ofa import OFA, PatchMerge, SepConv, TokenBranch, halvings, ofa_loss, token_grid
from hf_distill.methods.registry import instantiate
from tests.helpers import trainer_args
from tests.methods._common import (
    built,
    check_resume_restores_method,
    distill_trainer,
    train_split,
    zoo_model,
    zoo_spec,
)


def _ofa_reference(s: np.ndarray, t: np.ndarray, y: np.ndarray, eps: float, T: float) -> float:
    """The OFA loss per sample in plain loops, float64: the target term -((1 + p_t[y])^eps - 1) log p_s[y], the
    other classes -p_t[c]^eps log p_s[c]; batch mean."""
    total = 0.0
    for zs, zt, label in zip(s.astype(np.float64), t.astype(np.float64), y):
        es, et = [math.exp(v / T) for v in zs], [math.exp(v / T) for v in zt]
        ps, pt = [v / sum(es) for v in es], [v / sum(et) for v in et]
        for c in range(len(ps)):
            w = (1 + pt[c]) ** eps - 1 if c == label else pt[c] ** eps
            total -= w * math.log(ps[c])
    return total / len(y)


@pytest.mark.parametrize("eps, T", [(1.0, 1.0), (1.5, 1.0), (0.7, 1.0), (1.5, 3.0)])
def test_ofa_loss_matches_an_independent_reference(eps, T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(9, 6, generator=g) * 3, torch.randn(9, 6, generator=g) * 3
    y = torch.randint(0, 6, (9,), generator=g)
    expected = _ofa_reference(s.numpy(), t.numpy(), y.numpy(), eps, T)
    assert ofa_loss(s.double(), t.double(), y, eps, T).item() == pytest.approx(expected, rel=1e-10)
    assert ofa_loss(s, t, y, eps, T).item() == pytest.approx(expected, rel=1e-5)


def test_ofa_loss_hand_computed_cases():
    zero = torch.zeros(1, 2, dtype=torch.float64)
    y = torch.tensor([0])
    # two classes, both networks at (1/2, 1/2), eps 2: weights (1.5^2 - 1, 0.5^2) = (1.25, 0.25), -log(1/2) each
    assert ofa_loss(zero, zero, y, eps=2.0).item() == pytest.approx(1.5 * math.log(2), abs=1e-12)
    # eps 1: the weights are p_t, the cross-entropy with the teacher's probabilities (0.7, 0.3)
    zt = torch.tensor([[math.log(0.7), math.log(0.3)]], dtype=torch.float64)
    assert ofa_loss(zero, zt, y, eps=1.0).item() == pytest.approx(math.log(2), abs=1e-12)
    # a student at (0.9, 0.1), eps 3: target weight 1.7^3 - 1 = 3.913, non-target 0.3^3 = 0.027
    zs = torch.tensor([[math.log(0.9), math.log(0.1)]], dtype=torch.float64)
    expected = -(1.7**3 - 1) * math.log(0.9) - 0.3**3 * math.log(0.1)
    assert ofa_loss(zs, zt, y, eps=3.0).item() == pytest.approx(expected, abs=1e-12)


def test_ofa_loss_with_eps_one_is_kd_plus_the_teacher_entropy():
    g = torch.Generator().manual_seed(1)
    s, t = (
        torch.randn(8, 10, generator=g, dtype=torch.float64),
        torch.randn(8, 10, generator=g, dtype=torch.float64),
    )
    y = torch.randint(0, 10, (8,), generator=g)
    for T in (1.0, 4.0):
        p_t = (t / T).softmax(1)
        entropy = -(p_t * p_t.log()).sum(1).mean()
        expected = kd_loss(s, t, T) / T**2 + entropy
        assert ofa_loss(s, t, y, 1.0, T).item() == pytest.approx(expected.item(), rel=1e-10)


def _optimum(t: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The student probabilities that minimize the OFA loss alone (gradient descent on free logits)."""
    z = torch.zeros_like(t, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        ofa_loss(z, t, y, eps).backward()
        opt.step()
    return z.detach().softmax(1)


def test_eps_above_one_enhances_the_target_class():
    """With eps 1 the student that minimizes the loss is the teacher; with eps 1.5 it puts more probability on
    the ground-truth class than the teacher does."""
    g = torch.Generator().manual_seed(3)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    p_t = t.softmax(1)
    target = torch.arange(6), y
    torch.testing.assert_close(_optimum(t, y, 1.0), p_t, atol=1e-3, rtol=0)
    enhanced = _optimum(t, y, 1.5)[target]
    assert (enhanced > p_t[target] + 0.02).all()


def test_ofa_loss_gradients_are_finite():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 5, 3, 3])
    assert torch.autograd.gradcheck(lambda z: ofa_loss(z, t, y, 1.5, 2.0), (s,))
    # a confident teacher (probabilities underflow to 0) and eps < 1: finite values and gradients
    for eps in (0.5, 1.5):
        sf = torch.randn(4, 10, requires_grad=True)
        loss = ofa_loss(sf, torch.randn(4, 10) * 300, torch.tensor([1, 2, 3, 4]), eps)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(sf.grad).all() and sf.grad.abs().sum() > 0


# -- the branches -----------------------------------------------------------------------------------------------------
def test_halvings_and_token_grid():
    assert halvings((32, 32), (8, 8)) == 2 and halvings((8, 8), (8, 8)) == 0
    assert halvings((7, 7), (2, 2)) == 2 and halvings((5, 3), (2, 2)) == 2
    # (prefix tokens, grid side): a class token, + a distillation token, + 4 registers, or no prefix
    assert [token_grid(n) for n in (65, 197, 198, 201, 196)] == [(1, 8), (1, 14), (2, 14), (5, 14), (0, 14)]


def test_cnn_branches_follow_the_reference_layout_on_a_three_stage_cnn():
    m = built(OFA(), zoo_spec("resnet20"), zoo_spec("resnet56"))
    assert m.student_layer_names == ["stage1", "stage2", "stage3"]
    # maps (16, 32, 32), (32, 16, 16), (64, 8, 8): 2 and 1 separable blocks down to 8 x 8, then a 1x1 conv
    assert [sum(isinstance(b, SepConv) for b in br) for br in m.branches] == [2, 1, 0]
    assert isinstance(m.branches[2][0], nn.Conv2d) and m.branches[2][0].kernel_size == (1, 1)
    # channels double, the last block goes to the width (the deepest map's 64 channels)
    assert [m.branches[0][0][5].out_channels, m.branches[0][1][5].out_channels] == [32, 64]
    assert all(br[-1].in_features == 64 and br[-1].out_features == 10 for br in m.branches)
    f = torch.randn(3, 16, 32, 32)
    assert m.branches[0](f).shape == (3, 10)
    assert built(OFA(width=48), zoo_spec("resnet20"), zoo_spec("resnet56")).branches[1][-1].in_features == 48


def test_patch_merge_groups_2x2_neighbourhoods():
    g, d = 4, 2
    rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    x = torch.stack([rows, cols], -1).reshape(1, g * g, d).float()  # each token holds its (row, col)
    m = PatchMerge(g, d, activation=False)
    m.norm, m.reduce = nn.Identity(), nn.Identity()
    out = m(x).reshape(g // 2, g // 2, 4, d)
    for i in range(g // 2):
        for j in range(g // 2):
            cells = {tuple(v) for v in out[i, j].long().tolist()}
            assert cells == {(2 * i + a, 2 * j + b) for a in (0, 1) for b in (0, 1)}


def test_token_branches_merge_to_seven_and_read_the_class_token():
    torch.manual_seed(0)
    # 14 x 14 patches + a class token: one merge to 7 x 7; width 32 from tokens of 48
    br = TokenBranch(prefix=1, grid=14, dim=48, width=32, depth=2, num_classes=5)
    assert len(br.merge) == 1 and len(br.blocks) == 2 and isinstance(br.merge[-1].act, nn.Identity)
    x = torch.randn(2, 197, 48)
    assert br(x).shape == (2, 5)
    # the output reads the class token: changing it changes the output (the patches reach it through attention)
    y = x.clone()
    y[:, 0] += 1.0
    assert not torch.allclose(br(x), br(y))
    assert len(TokenBranch(0, 28, 8, 8, 1, 3).merge) == 2 and len(TokenBranch(0, 8, 8, 8, 1, 3).merge) == 0
    # a map (C, H, W) as tokens, no prefix: the mean of the patches
    assert TokenBranch(0, 8, 16, 16, 1, 3)(torch.randn(2, 16, 8, 8)).shape == (2, 3)


def _vit_spec(tokens: int = 65, dim: int = 32, layers: int = 4):
    from hf_distill.methods.base import FeatureSpec

    names = tuple(f"hidden_states.{i}" for i in range(layers + 1))
    return FeatureSpec(names=names, maps={n: (tokens, dim) for n in names[1:]}, logits=(10,))


def test_token_layers_get_the_vit_branch_and_bad_input_is_one_line():
    m = built(OFA(), _vit_spec(), zoo_spec("resnet56"))
    assert all(isinstance(b, TokenBranch) for b in m.branches)
    assert [len(b.blocks) for b in m.branches] == [3, 2, 1, 1] and all(b.prefix == 1 for b in m.branches)
    with pytest.raises(ValueError) as err:
        built(OFA(branch="cnn"), _vit_spec(), zoo_spec("resnet56"))
    msg = str(err.value)
    assert msg.startswith("ofa") and "'hidden_states.1'" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="ofa reads only the teacher's logits"):
        OFA(teacher_layers="stage1")
    for bad in ({"eps": 0.0}, {"temperature": -1.0}, {"branch": "mlp"}, {"width": 0}, {"stage_weight": -1.0}):
        with pytest.raises(ValueError, match="ofa"):
            OFA(**bad)


def test_ofa_terms_weights_and_gradients_on_random_features():
    from tests.methods._common import random_features

    s_spec, t_spec = zoo_spec("resnet20"), zoo_spec("resnet56")
    torch.manual_seed(0)
    m = built(OFA(eps=1.5, stage_weight=2.0, logits_weight=0.5), s_spec, t_spec).train()
    s, t = random_features(s_spec, 8, seed=1), random_features(t_spec, 8, seed=2)
    s.logits.requires_grad_(True)
    for v in s.maps.values():
        v.requires_grad_(True)
    y = torch.arange(8) % 10
    out = m(s, t, StepInfo(labels=y))
    assert set(out) == {"ofa_stage1", "ofa_stage2", "ofa_stage3", "ofa_logits"}
    assert out["ofa_logits"].item() == pytest.approx(
        0.5 * ofa_loss(s.logits, t.logits, y, 1.5).item(), rel=1e-6
    )
    z = m.branches[1](s.maps["stage2"])
    assert out["ofa_stage2"].item() == pytest.approx(2.0 * ofa_loss(z, t.logits, y, 1.5).item(), rel=1e-6)
    sum(out.values()).backward()
    used = [s.logits, *s.map_list(m.student_layer_names)]
    assert all(torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0 for v in used)
    assert all(p.grad is not None for p in m.parameters())
    assert set(built(OFA(logits_weight=0.0), s_spec, t_spec)(s, t, StepInfo(labels=y))) == {
        "ofa_stage1",
        "ofa_stage2",
        "ofa_stage3",
    }


def test_defaults_and_needs():
    assert OFA.hyperparameters() == {
        "eps": 1.0,
        "temperature": 1.0,
        "stage_weight": 1.0,
        "logits_weight": 1.0,
        "branch": "auto",
        "width": None,
        "student_layers": "stages",
        "teacher_layers": "",
    }
    obj = DistillationObjective.from_names("ofa")
    assert obj.ce_weight == 1.0 and obj.weights == {"ofa": 1.0}
    n = instantiate("ofa", {"eps": 1.5, "student_layers": "1,3"}).needs()
    assert n.student.logits and n.student.maps == (1, 3)
    assert n.teacher.logits and not n.teacher.maps and not n.teacher.embedding and not n.index


# -- through the trainer ----------------------------------------------------------------------------------------------
def _train(tmp_path, subset_train, student, teacher, method_kwargs=None, **args):
    t = distill_trainer(
        trainer_args(tmp_path / "out", **args),
        DistillationObjective.from_names("ofa", method_kwargs={"ofa": method_kwargs or {}}),
        train_split(subset_train, 32).dataset,
        student,
        teacher,
    )
    ofa = t.model.objective.methods["ofa"]
    before = {n: p.detach().clone() for n, p in ofa.named_parameters()}
    t.train()
    opt_ids = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in ofa.parameters()} <= opt_ids
    assert any(not torch.equal(p, before[n]) for n, p in ofa.named_parameters())
    logs = [h for h in t.state.log_history if "loss" in h]
    terms = [f"loss_ofa_{n}" for n in ofa.student_layer_names] + ["loss_ofa_logits"]
    assert logs and all(math.isfinite(h[k]) and h[k] > 0 for h in logs for k in terms)
    return t


def test_ofa_trains_a_zoo_student_with_its_branches(tmp_path, subset_train):
    """cifar_resnet56 -> cifar_resnet20 (random weights): the branches are optimized with the student, the
    teacher is asked for its logits only (so the teacher cache can serve it)."""
    t = _train(tmp_path, subset_train, zoo_model("resnet20"), zoo_model("resnet56", seed=1))
    assert t.teacher_request.logits and not t.teacher_request.maps and not t.teacher_request.embedding


def test_ofa_branches_are_checkpointed_and_restored(tmp_path, subset_train):
    check_resume_restores_method(tmp_path, train_split(subset_train, 64), "ofa", {"eps": 1.5})


@pytest.mark.slow
def test_ofa_trains_a_timm_student_from_a_timm_teacher(tmp_path, subset_train):
    """timm resnet18 -> timm mobilenetv3_small_050 at 32 px (random weights): CNN branches on timm's stages."""
    from tests.helpers import timm_model

    t = _train(tmp_path, subset_train, timm_model("mobilenetv3_small_050"), timm_model("resnet18", seed=1))
    assert t.model.objective.methods["ofa"].student_layer_names == [
        "blocks.0",
        "blocks.1",
        "blocks.3",
        "blocks.5",
    ]


@pytest.mark.slow
def test_ofa_trains_a_vit_student_with_token_branches(tmp_path, subset_train):
    """A timm ViT-Tiny student at 32 px (patch 4: 8 x 8 tokens) from the zoo resnet56: the reference's four taps
    (blocks 1, 3, 9, 11) through token branches of 3, 2, 1 and 1 transformer blocks."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    torch.manual_seed(0)
    vit = TimmWrapperForImageClassification(
        TimmWrapperConfig(
            architecture="vit_tiny_patch16_224",
            model_args={"img_size": 32, "patch_size": 4},
            num_labels=10,
        )
    )
    kwargs = {"branch": "vit", "student_layers": "1,3,9,11"}
    t = _train(tmp_path, subset_train, vit, zoo_model("resnet56", seed=1), kwargs, max_steps=1)
    ofa = t.model.objective.methods["ofa"]
    assert ofa.student_layer_names == ["blocks.1", "blocks.3", "blocks.9", "blocks.11"]
    assert [len(b.blocks) for b in ofa.branches] == [3, 2, 1, 1]


def test_ofa_on_a_transformers_vit_reads_its_class_token():
    """A transformers ViT gives (B, 1 + N, D) hidden states: auto picks token branches reading the class token;
    one loss evaluation reaches every branch and the student."""
    from transformers import ViTConfig, ViTForImageClassification

    from tests.methods._common import readers

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
    )
    student, teacher = ViTForImageClassification(cfg), zoo_model("resnet56", seed=1)
    x = torch.randn(4, 3, 32, 32)
    m = built(OFA(), student, teacher, x=x[:2]).train()
    assert all(isinstance(b, TokenBranch) and b.prefix == 1 for b in m.branches)
    s_tap, t_tap, s_req, t_req = readers(m, student, teacher)
    student.train()
    with torch.no_grad():
        tf = t_tap(teacher, x, t_req)
    out = m(s_tap(student, x, s_req), tf, StepInfo(labels=torch.tensor([0, 1, 2, 3])))
    assert len(out) == 4 and all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert all(p.grad is not None for p in m.parameters())
    first = [p for n, p in student.named_parameters() if "patch_embeddings" in n]
    assert first and all(p.grad is not None and p.grad.abs().sum() > 0 for p in first)
