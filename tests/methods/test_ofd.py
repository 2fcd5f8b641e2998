import math

import numpy as np
import pytest
import torch

from hf_distill.methods import DistillationObjective, Features, FeatureSpec, StepInfo, resolve_objective
from hf_distill.methods.ofd import OFD, ofd_loss, ofd_margin, ofd_partial_l2
from hf_distill.models.batchnorm import batchnorm_affine, batchnorm_before_maps
from hf_distill.training.trainer import build_distillation_model
from tests.methods._common import (
    ZOO_PAIRS,
    built,
    check_resume_restores_method,
    features_spec,
    np_block_pool,
    training_losses,
    zoo_model,
    zoo_spec,
)

STEP = StepInfo(labels=torch.zeros(2, dtype=torch.long))


def _np_margin(w, b):
    """E[x | x < 0] for x ~ N(b, w^2) by its textbook formula, or -3|w| when P(x < 0) <= 1e-3."""
    s = abs(w)
    p = 0.5 * (1 + math.erf(-b / s / math.sqrt(2)))
    if p <= 1e-3:
        return -3 * s
    return b - s * math.exp(-((b / s) ** 2) / 2) / math.sqrt(2 * math.pi) / p


def _np_partial_l2(s, t, m):
    """The partial L2 element by element: target below the margin -> (s - m)^2 if s > m; target in (m, 0] -> (s -
    t)^2 if s > t; positive target -> (s - t)^2; summed, divided by the batch."""
    total = 0.0
    for idx in np.ndindex(*s.shape):
        sv, tv, mv = s[idx], t[idx], m[idx[1]]
        if tv > 0:
            total += (sv - tv) ** 2
        elif tv > mv:
            total += (sv - tv) ** 2 if sv > tv else 0.0
        else:
            total += (sv - mv) ** 2 if sv > mv else 0.0
    return total / s.shape[0]


def test_margin_matches_the_conditional_mean_formula():
    w = torch.tensor([1.0, 2.0, -0.5, 1.0, 0.3], dtype=torch.double)
    b = torch.tensor([0.0, 1.0, -0.2, 5.0, 0.1], dtype=torch.double)  # channel 3: P(x < 0) ~ 3e-7 -> -3|w|
    got = ofd_margin(w, b)
    expected = [_np_margin(float(a), float(c)) for a, c in zip(w, b)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert got[0].item() == pytest.approx(-math.sqrt(2 / math.pi))  # standard normal: -phi(0) / Phi(0)
    assert got[3].item() == -3.0 and torch.all(got < 0)
    # a Monte-Carlo check of E[x | x < 0] for one channel
    x = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.double) * 2.0 + 1.0
    assert x[x < 0].mean().item() == pytest.approx(got[1].item(), abs=5e-3)


def test_partial_l2_matches_elementwise_reference():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(3, 4, 2, 2)), rng.normal(size=(3, 4, 2, 2))
    m = np.array([-0.5, -1.0, -0.2, -2.0])
    got = ofd_partial_l2(torch.tensor(s), torch.tensor(t), torch.tensor(m))
    assert got.item() == pytest.approx(_np_partial_l2(s, t, m), rel=1e-12)
    # concrete elements, margin -1: t=2 -> (s-t)^2; t=-3 (below m), s=0 -> (0+1)^2; t=-0.5, s=-0.7 < t -> 0
    one = lambda v: torch.tensor(v, dtype=torch.double).view(1, 3, 1, 1)  # noqa: E731
    val = ofd_partial_l2(
        one([1.0, 0.0, -0.7]), one([2.0, -3.0, -0.5]), torch.full((3,), -1.0, dtype=torch.double)
    )
    assert val.item() == pytest.approx(1.0 + 1.0 + 0.0)


def test_layer_weights_and_teacher_pooling():
    rng = np.random.default_rng(1)
    s = [rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 4, 2, 2))]
    t = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 4, 2, 2))]
    m = [np.full(3, -0.5), np.full(4, -1.0)]
    got = ofd_loss([torch.tensor(a) for a in s], [torch.tensor(a) for a in t], [torch.tensor(a) for a in m])
    expected = _np_partial_l2(s[0], np_block_pool(t[0], 2), m[0]) / 2 + _np_partial_l2(s[1], t[1], m[1])
    assert got.item() == pytest.approx(expected, rel=1e-12)


def _specs_with_bn():
    w1, b1 = torch.tensor([1.0, 0.5, 2.0, 1.5]), torch.tensor([0.0, 0.3, -1.0, 0.2])
    w2, b2 = torch.tensor([0.8, 1.2]), torch.tensor([0.1, -0.1])
    s = FeatureSpec(names=("stem", "a", "b"), maps={"a": (3, 4, 4), "b": (5, 2, 2)})
    t = FeatureSpec(
        names=("stem", "a", "b"),
        maps={"a": (4, 8, 8), "b": (2, 2, 2)},
        batchnorm={"a": (w1, b1), "b": (w2, b2)},
    )
    return s, t


def test_method_reads_margins_from_the_spec_and_matches_a_reference():
    s_spec, t_spec = _specs_with_bn()
    m = built(OFD(), s_spec, t_spec).double().train()
    for got, name in zip(m.margins(), ("a", "b")):
        assert torch.allclose(got.float(), ofd_margin(*t_spec.batchnorm[name]))
    g = torch.Generator().manual_seed(0)
    fs = {k: torch.randn(2, *v, generator=g, dtype=torch.double) for k, v in s_spec.maps.items()}
    ft = {k: torch.randn(2, *v, generator=g, dtype=torch.double) for k, v in t_spec.maps.items()}
    expected = 0.0
    for i, (conn, name) in enumerate(zip(m.connectors, ("a", "b"))):
        w = conn[0].weight.detach()[:, :, 0, 0]
        x = torch.einsum("oc,bchw->bohw", w, fs[name])
        mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + conn[1].eps)  # BN at identity affine
        t = ft[name].numpy()
        t = np_block_pool(t, x.shape[-1]) if t.shape[-1] != x.shape[-1] else t
        margin = m.margins()[i].numpy()
        expected += _np_partial_l2(x.numpy(), t, margin) / 2 ** (1 - i)
    with torch.no_grad():
        got = m(Features(maps=fs), Features(maps=ft), STEP)["ofd"]
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_gradients_reach_student_and_connectors_not_the_teacher():
    s_spec, t_spec = _specs_with_bn()
    m = built(OFD(), s_spec, t_spec).double()
    fs = {k: torch.randn(2, *v, dtype=torch.double, requires_grad=True) for k, v in s_spec.maps.items()}
    ft = {k: torch.randn(2, *v, dtype=torch.double, requires_grad=True) for k, v in t_spec.maps.items()}
    m(Features(maps=fs), Features(maps=ft), STEP)["ofd"].backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in fs.values())
    assert all(v.grad is None for v in ft.values())
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_missing_batchnorm_is_one_clear_error():
    s_spec, t_spec = _specs_with_bn()
    bare = FeatureSpec(names=t_spec.names, maps=t_spec.maps, batchnorm={"a": t_spec.batchnorm["a"]})
    with pytest.raises(ValueError, match=r"teacher's layer 'b' has none.*--ofd-teacher-layers"):
        built(OFD(), s_spec, bare)


def _zoo_teacher_spec(arch: str) -> FeatureSpec:
    """The spec the trainer's dry run gives a zoo teacher for OFD: pre-activation maps and their BatchNorms."""
    from hf_distill.features import FeatureNeeds
    from hf_distill.models.taps import feature_tap

    model = zoo_model(arch).eval()
    tap = feature_tap(model)
    req = FeatureNeeds(logits=False, maps=tuple(tap.names), preact=True)
    f, bns = batchnorm_before_maps(model, lambda: tap(model, torch.randn(2, 3, 32, 32), req))
    spec = features_spec(tap.names, f)
    return FeatureSpec(
        names=spec.names, maps=spec.maps, batchnorm={k: batchnorm_affine(b) for k, b in bns.items()}
    )


@pytest.mark.parametrize("teacher, student", ZOO_PAIRS)
def test_zoo_pairs(teacher, student):
    s_spec, t_spec = zoo_spec(student), _zoo_teacher_spec(teacher)
    m = built(OFD(), s_spec, t_spec)
    for conn, sn, tn in zip(m.connectors, m.student_layer_names, m.teacher_layer_names):
        assert (conn[0].in_channels, conn[0].out_channels) == (s_spec.maps[sn][0], t_spec.maps[tn][0])
    s = Features(maps={n: torch.randn(2, *s_spec.maps[n], requires_grad=True) for n in m.student_layer_names})
    t = Features(maps={n: torch.randn(2, *t_spec.maps[n]) for n in m.teacher_layer_names})
    loss = m(s, t, STEP)["ofd"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(v.grad is not None for v in s.maps.values())


def _ofd_objective(**kw):
    return DistillationObjective.from_names("ofd", method_kwargs={"ofd": kw})


def test_trainer_reads_the_batchnorm_of_zoo_timm_and_transformers_teachers():
    import timm
    import transformers

    student = zoo_model("resnet8")
    # zoo: the pre-activation stage map of a ResNet is the last block's bn2 output plus its identity shortcut
    teacher = zoo_model("resnet56", seed=1)
    with torch.no_grad():
        for bn in (teacher.model.stage1[-1].bn2, teacher.model.stage2[-1].bn2):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
    obj = _ofd_objective()
    build_distillation_model(student, teacher, obj)
    ofd = obj.methods["ofd"]
    assert ofd.teacher_layer_names == ["stage1", "stage2", "stage3"]
    for i, stage in enumerate((teacher.model.stage1, teacher.model.stage2, teacher.model.stage3)):
        bn = stage[-1].bn2
        assert torch.allclose(ofd.margins()[i], ofd_margin(bn.weight.detach(), bn.bias.detach())), i
    assert not torch.allclose(ofd.margins()[0][:4], ofd.margins()[2][:4])

    # timm (post-activation maps: timm gives no pre-activation ones, and says how to do without)
    tm = timm.create_model("resnet18", pretrained=False, num_classes=10)
    with pytest.raises(ValueError, match="cannot give pre-activation.*--ofd-teacher-preact"):
        build_distillation_model(
            zoo_model("resnet8"), tm, _ofd_objective(teacher_layers="layer1,layer2,layer3")
        )
    obj = _ofd_objective(teacher_preact=False, teacher_layers="layer1,layer2,layer3")
    build_distillation_model(zoo_model("resnet8"), tm, obj)
    for i, name in enumerate(("layer1", "layer2", "layer3")):
        bn = tm.get_submodule(name)[-1].bn2
        assert torch.allclose(
            obj.methods["ofd"].margins()[i], ofd_margin(bn.weight.detach(), bn.bias.detach())
        )

    # transformers ResNet
    cfg = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16], depths=[2, 2, 2], num_labels=10
    )
    hf = transformers.ResNetForImageClassification(cfg)
    obj = _ofd_objective(teacher_preact=False, teacher_layers="1,2,3")
    build_distillation_model(zoo_model("resnet8"), hf, obj)
    for i, stage in enumerate(hf.resnet.encoder.stages):
        bn = stage.layers[-1].layer[-1].normalization
        assert torch.allclose(
            obj.methods["ofd"].margins()[i], ofd_margin(bn.weight.detach(), bn.bias.detach())
        )

    # a ViT (its tokens laid out as maps) has no BatchNorm in front of its blocks, nor has a map made by no module
    # (the zoo VGG's post-ReLU stage output): one clear error each
    vcfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32, num_labels=10,
    )  # fmt: skip
    vit = transformers.ViTForImageClassification(vcfg)
    with pytest.raises(
        ValueError, match=r"teacher's layer 'hidden_states.1' \(ViTForImageClassification\) has none"
    ):
        build_distillation_model(
            zoo_model("resnet8"), vit, _ofd_objective(teacher_preact=False, teacher_layers="1,2,3")
        )
    with pytest.raises(
        ValueError, match=r"teacher's layer 'stage1' \(CifarForImageClassification\) has none"
    ):
        build_distillation_model(
            zoo_model("resnet8"),
            zoo_model("vgg13"),
            _ofd_objective(teacher_preact=False, teacher_layers="1,2,3"),
        )


def test_options_and_defaults():
    spec = resolve_objective("ofd")
    assert spec.weights == (1e-3,) and spec.ce_weight == 1.0
    assert OFD().hparams() == {
        "student_preact": True,
        "teacher_preact": True,
        "student_layers": "stages",
        "teacher_layers": "",
    }
    n = OFD().needs()
    assert n.student.preact and n.teacher.preact and n.teacher.batchnorm and not n.student.batchnorm


def test_training_steps_decrease_the_loss(batch):
    losses = training_losses(OFD(), batch, 0.01, scale=1e-3, terms=("ofd",))
    # the summed partial L2 of a random student is large and falls steadily at the reference's weight
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow
def test_trainer_resume_restores_connectors_and_margins(tmp_path, tiny):
    check_resume_restores_method(tmp_path, tiny, "ofd", {})
