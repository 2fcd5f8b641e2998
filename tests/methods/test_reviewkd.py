import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_distill.methods import Features, FeatureSpec, StepInfo, resolve_objective
from hf_distill.methods.reviewkd import (
    ReviewKD,
    attention_mix,
    attention_mix_autograd,
    hcl_loss,
    pooled_pyramid,
)
from tests.methods._common import (
    ZOO_PAIRS,
    built,
    check_resume_restores_method,
    np_block_pool,
    random_features,
    training_losses,
    zoo_spec,
)

LATE = StepInfo(labels=torch.zeros(2, dtype=torch.long), epoch=50.0)


def _np_hcl(s, t):
    """HCL with numpy: MSE at full size (weight 1) and at the pooled sizes 4, 2, 1 below H (weights 1/2, 1/4, 1/8),
    divided by the weights used."""
    h = s.shape[-1]
    num, den, w = np.mean((s - t) ** 2), 1.0, 1.0
    for size in (4, 2, 1):
        if size < h:
            w /= 2
            num += w * np.mean((np_block_pool(s, size) - np_block_pool(t, size)) ** 2)
            den += w
    return num / den


def test_hcl_matches_numpy():
    rng = np.random.default_rng(0)
    s = [rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 4, 4, 4)), rng.normal(size=(2, 5, 1, 1))]
    t = [rng.normal(size=a.shape) for a in s]
    got = hcl_loss([torch.tensor(a) for a in s], [torch.tensor(a) for a in t])
    assert got.item() == pytest.approx(sum(_np_hcl(a, b) for a, b in zip(s, t)), rel=1e-12)
    # a concrete value: a constant difference d on an 8x8 map costs d^2 at every level -> d^2
    ones = torch.ones(1, 1, 8, 8, dtype=torch.double)
    assert hcl_loss([3 * ones], [ones]).item() == pytest.approx(4.0)


def test_pooled_pyramid_equals_pooling_the_full_map():
    x = torch.randn(2, 3, 12, 10, dtype=torch.double)
    for sizes in (
        [4, 2, 1],
        [6, 3, 1],
        [5, 2],
        [2],
    ):  # even blocks reuse the previous level; uneven ones do not
        for got, size in zip(pooled_pyramid(x, sizes), sizes, strict=True):
            torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, size), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, residual_size", [(8, 4), (8, 1), (8, 2), (6, 6), (6, 3), (7, 2), (5, 1)])
def test_attention_mix_equals_the_autograd_formula(size, residual_size):
    """The hand-written gradient (power-of-two upsampling as blocks) and the resized fallbacks against autograd."""
    g = torch.Generator().manual_seed(size * 10 + residual_size)
    args = [
        torch.randn(3, 5, size, size, generator=g, dtype=torch.double),
        torch.randn(3, 5, residual_size, residual_size, generator=g, dtype=torch.double),
        torch.randn(2, 10, 1, 1, generator=g, dtype=torch.double),
        torch.randn(2, generator=g, dtype=torch.double),
    ]
    grad_out = torch.randn(3, 5, size, size, generator=g, dtype=torch.double)
    results = []
    for fn in (attention_mix, attention_mix_autograd):
        inputs = [a.clone().requires_grad_(True) for a in args]
        out = fn(*inputs)
        results.append([out, *torch.autograd.grad(out, inputs, grad_out)])
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    inputs = [a.clone().requires_grad_(True) for a in args]
    assert torch.autograd.gradcheck(attention_mix, inputs)


def test_attention_mix_of_channels_last_maps_and_under_bfloat16_autocast():
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    r, w, b = torch.randn(2, 4, 4, 4), torch.randn(2, 8, 1, 1), torch.randn(2)
    torch.testing.assert_close(attention_mix(x, r, w, b), attention_mix_autograd(x, r, w, b))  # the fallback
    w.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attention_mix(x.to(torch.bfloat16).contiguous(), r.to(torch.bfloat16), w, b)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), attention_mix_autograd(x, r, w, b), rtol=0.05, atol=0.05)
    low.float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


def _bn(x, bn):
    """Training-mode batch normalization by its formula (biased batch variance)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    w, b = bn.weight.view(1, -1, 1, 1), bn.bias.view(1, -1, 1, 1)
    return (x - mean) / torch.sqrt(var + bn.eps) * w + b


def _nearest(x, size):
    """Nearest resizing by integer factors (up: repeat, down: take every k-th) - the sizes of this test."""
    h, w = x.shape[-2:]
    if size[0] >= h:
        return x.repeat_interleave(size[0] // h, dim=2).repeat_interleave(size[1] // w, dim=3)
    return x[:, :, :: h // size[0], :: w // size[1]]


def _reference_review(m, s_levels, t_sizes):
    """The reviewed student levels with explicit convolutions, BN formulas and nearest resizing."""
    out, res = [None] * len(s_levels), None
    for i in range(len(s_levels) - 1, -1, -1):
        f = m.fusions[i]
        x = _bn(F.conv2d(s_levels[i], f.reduce[0].weight), f.reduce[1])
        if f.attention is not None:
            r = _nearest(res, tuple(x.shape[-2:]))
            conv = f.attention[0]
            a = torch.sigmoid(F.conv2d(torch.cat([x, r], 1), conv.weight, conv.bias))
            x = x * a[:, 0:1] + r * a[:, 1:2]
        x = _nearest(x, t_sizes[i]) if tuple(x.shape[-2:]) != t_sizes[i] else x
        res = x
        out[i] = _bn(F.conv2d(x, f.output[0].weight, padding=1), f.output[1])
    return out


def _small_specs():
    s = FeatureSpec(names=("stem", "a", "b"), maps={"a": (3, 4, 4), "b": (5, 2, 2)}, embedding=(6,))
    t = FeatureSpec(names=("stem", "a", "b"), maps={"a": (4, 8, 8), "b": (7, 4, 4)}, embedding=(9,))
    return s, t


def test_method_value_matches_an_explicit_reference():
    s_spec, t_spec = _small_specs()
    m = built(ReviewKD(), s_spec, t_spec).double().train()
    assert [f.attention is not None for f in m.fusions] == [True, True, False]
    assert [f.reduce[0].out_channels for f in m.fusions] == [6, 6, 6]  # min(512, deepest student width)
    fs, ft = random_features(s_spec, 3), random_features(t_spec, 3, seed=1, relu=False)
    fs = Features(maps={k: v.double() for k, v in fs.maps.items()}, embedding=fs.embedding.double())
    ft = Features(maps={k: v.double() for k, v in ft.maps.items()}, embedding=ft.embedding.double())
    s_levels = [fs.maps["a"], fs.maps["b"], fs.embedding[:, :, None, None]]
    t_levels = [ft.maps["a"], ft.maps["b"], ft.embedding[:, :, None, None]]
    with torch.no_grad():
        ref = _reference_review(m, s_levels, [(8, 8), (4, 4), (1, 1)])
        expected = sum(_np_hcl(r.numpy(), t.numpy()) for r, t in zip(ref, t_levels))
        got = m(fs, ft, LATE)["reviewkd"]
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # the warm-up: epoch 0 is mdistiller's epoch 1 -> 1/20 of the loss
    with torch.no_grad():
        early = m(fs, ft, StepInfo(labels=LATE.labels, epoch=0.0))["reviewkd"]
    assert early.item() == pytest.approx(expected / 20, rel=1e-10)


def test_without_the_embedding_level():
    s_spec, t_spec = _small_specs()
    m = built(ReviewKD(use_embedding=False), s_spec, t_spec).double()
    assert (
        len(m.fusions) == 2 and m.fusions[-1].attention is None and m.fusions[0].reduce[0].out_channels == 5
    )
    assert not m.needs().student.embedding and m.needs().teacher.preact


def test_gradients_reach_student_levels_and_every_fusion_part_not_the_teacher():
    s_spec, t_spec = _small_specs()
    m = built(ReviewKD(), s_spec, t_spec).double()
    fs, ft = random_features(s_spec, 2), random_features(t_spec, 2, seed=1)
    fs = Features(
        maps={k: v.double().requires_grad_(True) for k, v in fs.maps.items()},
        embedding=fs.embedding.double().requires_grad_(True),
    )
    ft = Features(maps={k: v.double() for k, v in ft.maps.items()}, embedding=ft.embedding.double())
    m(fs, ft, LATE)["reviewkd"].backward()
    for v in [*fs.maps.values(), fs.embedding]:
        assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(v.grad is None for v in ft.maps.values())
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("teacher, student", ZOO_PAIRS)
def test_zoo_pairs(teacher, student):
    s_spec, t_spec = zoo_spec(student), zoo_spec(teacher)
    m = built(ReviewKD(), s_spec, t_spec)
    levels = len(m.student_layer_names) + 1
    assert len(m.fusions) == levels
    t_shapes = [t_spec.maps[n] for n in m.teacher_layer_names] + [(t_spec.embedding[0], 1, 1)]
    fs = random_features(s_spec, 2)
    for v in fs.maps.values():
        v.requires_grad_(True)
    fused = m.review(m.levels(fs, m.student_layer_names))
    assert [tuple(f.shape[1:]) for f in fused] == [tuple(s) for s in t_shapes]
    loss = m(fs, random_features(t_spec, 2, seed=1, relu=False), LATE)["reviewkd"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(fs.maps[n].grad is not None for n in m.student_layer_names)


def test_options_errors_and_defaults():
    tokens = FeatureSpec(names=("h0", "h1"), maps={"h1": (5, 8)}, embedding=(8,))
    with pytest.raises(ValueError, match=r"convolutional \(C, H, W\)"):
        built(ReviewKD(), tokens, tokens)
    with pytest.raises(ValueError, match="--reviewkd-student-layers / --reviewkd-teacher-layers"):
        built(ReviewKD(), zoo_spec("resnet20"), zoo_spec("vgg13"))
    for bad in ({"warmup_epochs": -1}, {"warmup_granularity": "x"}):
        with pytest.raises(ValueError, match="reviewkd"):
            ReviewKD(**bad)
    spec = resolve_objective("reviewkd")
    assert spec.weights == (1.0,) and spec.ce_weight == 1.0
    assert ReviewKD().hparams() == {
        "warmup_epochs": 20.0,
        "warmup_granularity": "epoch",
        "use_embedding": True,
        "teacher_preact": True,
        "student_layers": "stages",
        "teacher_layers": "",
    }
    assert ReviewKD(teacher_preact=False).needs().teacher.preact is False


def test_training_steps_decrease_the_loss(batch):
    kw = {"warmup_epochs": 0}
    losses = training_losses(ReviewKD(**kw), batch, lr=0.05)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_trainer_resume_restores_the_fusion_modules(tmp_path, tiny):
    check_resume_restores_method(tmp_path, tiny, "reviewkd", {})
