"""Automatic layer pairing (``student_layers="auto"``, docs/any_pair.md): every feature method of the registry builds
and takes a training step on five cross-family pairs (timm CNNs, timm ViTs, a transformers ViT, a zoo CNN), or refuses
the pair in one line saying why; the pairing rules on shapes made by hand; the bad inputs; the record the log and the
model card read."""

from __future__ import annotations

import json
import logging
import re
from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn
from transformers import PretrainedConfig, ViTConfig, ViTForImageClassification

from hf_distill.features import AUTO, FeatureSpec
from hf_distill.methods import METHODS, DataInfo, DistillationObjective, StepInfo
from hf_distill.methods.base import resolve_selectors
from hf_distill.methods.pairing import MAX_AUTO_PAIRS, auto_pairs, method_role, network_stages
from hf_distill.methods.registry import instantiate
from hf_distill.models.modeling_cifar import create_cifar_model
from hf_distill.models.normalization import InputSpec, TeacherInput
from hf_distill.training.distillation_model import build_distillation_model
from hf_distill.training.ensemble import TeacherEnsemble, build_ensemble_distillation

SIZE, BATCH, CLASSES = 32, 4, 5
SPEC = InputSpec((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), SIZE)


def _timm(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)


def _hf_vit(layers: int = 4, labels: int = CLASSES) -> nn.Module:
    cfg = ViTConfig(
        image_size=SIZE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=labels,
    )
    return ViTForImageClassification(cfg)


#: (teacher, student) factories: the smallest timm variants at 32 px (ViTs with patch 8: a 4 x 4 grid)
PAIRS = {
    "resnet-mobilenetv3": lambda: (_timm("resnet10t"), _timm("mobilenetv3_small_050")),
    "resnet-vit": lambda: (_timm("resnet10t"), _timm("vit_tiny_patch16_224", img_size=SIZE, patch_size=8)),
    "vit-resnet": lambda: (_timm("vit_small_patch16_224", img_size=SIZE, patch_size=8), _timm("resnet10t")),
    "convnext-efficientnet": lambda: (_timm("convnext_atto"), _timm("efficientnet_b0")),
    "hfvit-zoo": lambda: (_hf_vit(), create_cifar_model("resnet8", num_labels=CLASSES)),
}
_BN_FREE_TEACHERS = ("vit-resnet", "convnext-efficientnet", "hfvit-zoo")


def _feature_methods() -> list[str]:
    """The registry's methods that read the teacher's maps or embedding (not only its logits)."""
    out = []
    for name in sorted(METHODS):
        t = instantiate(name).needs().teacher
        if t.maps or t.embedding:
            out.append(name)
    return out


FEATURE_METHODS = _feature_methods()

#: (method, pair) -> what its one-line refusal says; every other cell must build and train
REFUSALS = {
    **{("fsp", p): r"equal channel counts without a connector.*--fsp-connector auto" for p in PAIRS},
    **{
        ("ofd", p): r"margin from the BatchNorm.*teacher's layer '[\w.]+' \(\w+\) has none"
        for p in _BN_FREE_TEACHERS
    },
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine torch's two threads wait on each other and these small
    networks run 30 times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def networks():
    """Each pair's networks, made once (random weights, seed 0) and shared by every method."""
    made: dict[str, tuple[nn.Module, nn.Module]] = {}

    def get(pair: str) -> tuple[nn.Module, nn.Module]:
        if pair not in made:
            torch.manual_seed(0)
            teacher, student = PAIRS[pair]()
            made[pair] = (teacher.eval(), student)
        return made[pair]

    return get


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    return x, torch.arange(BATCH) % CLASSES, torch.arange(BATCH)


def _rows(x, y):
    return [{"pixel_values": x[i], "labels": int(y[i]), "index": i} for i in range(len(x))]


def _collate(rows):
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}


def _auto_kwargs(method: str, **extra) -> dict:
    hp = METHODS[method].hyperparameters()
    return {**({"student_layers": AUTO} if "student_layers" in hp else {}), **extra}


def _build(method: str, teacher: nn.Module, student: nn.Module, **kwargs):
    obj = DistillationObjective({method: instantiate(method, _auto_kwargs(method, **kwargs))}, {method: 1.0})
    x, y, _ = _batch()
    return build_distillation_model(
        student, teacher, obj, _rows(x, y), _collate, DataInfo(BATCH, CLASSES, y), TeacherInput(SPEC, SPEC)
    )


def _train_step(built, teacher: nn.Module, phase: str = "main") -> dict[str, float]:
    """One SGD step of the container (the student and the method's parts) on one batch; returns the terms."""
    x, y, index = _batch()
    container = built.container
    container.train()
    container.phase = phase
    with torch.no_grad():
        t_feat = built.teacher_tap(teacher, x, built.teacher_request)
    params = [p for p in container.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01)
    out = container(x, y, index, t_feat, StepInfo(labels=y, index=index, epoch=1.0, num_epochs=2.0))
    opt.zero_grad()
    out["loss"].backward()
    grads = [p.grad for p in params if p.grad is not None]
    assert torch.isfinite(out["loss"]), out["loss_terms"]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    opt.step()
    container.phase = "main"
    return {k: float(v.detach()) for k, v in out["loss_terms"].items()}


def test_the_feature_methods_come_from_the_registry():
    # the lead's list, plus the registry's other feature readers (iekd, icd): none is left out by hand
    listed = "at fitnet nst sp ofd reviewkd ab ft fsp vid kdsvd cc pkt rkd crd".split()
    assert set(listed) <= set(FEATURE_METHODS)
    assert not {"kd", "dkd", "ofa", "dml"} & set(FEATURE_METHODS)


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_every_feature_method_trains_or_refuses_on_every_pair(method, pair, networks):
    teacher, student = networks(pair)
    if (method, pair) in REFUSALS:
        with pytest.raises(ValueError) as err:
            _build(method, teacher, student)
        msg = str(err.value)
        assert re.search(REFUSALS[(method, pair)], msg) and "\n" not in msg, msg
        return
    built = _build(method, teacher, student)
    m = built.container.objective.methods[method]
    terms = _train_step(built, teacher)
    assert any(k == method or k.startswith(method + "_") for k in terms), terms
    if m.init_stage is not None:  # AB, FT, IE-KD: the stage that trains the connectors / the paraphraser
        assert all(v == v for v in _train_step(built, teacher, phase="init").values())
    if m.needs().teacher.maps:  # a map method: the pairs are recorded, auto, with the layers it reads
        pairs = built.pairing[method]
        assert pairs and all(p.auto for p in pairs)
        assert [p.student for p in pairs] == m.student_layer_names
        assert [p.teacher for p in pairs] == m.teacher_layer_names
        assert len(pairs) <= MAX_AUTO_PAIRS and all(len(p.student_shape) == 3 for p in pairs)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_fsp_with_a_connector_trains_on_every_pair(pair, networks):
    teacher, student = networks(pair)
    built = _build("fsp", teacher, student, connector="auto", main_stage_loss=True)
    assert _train_step(built, teacher)["fsp"] > 0
    _train_step(built, teacher, phase="init")
    assert all(p.connector.startswith(("1x1 conv", "none")) for p in built.pairing["fsp"])


# -- the rules, on shapes made by hand --------------------------------------------------------------------------------
def _cnn(strides=(2, 4, 8, 16, 32), widths=(16, 24, 40, 112, 320), size=224, names=None) -> FeatureSpec:
    names = names or [f"s{s}" for s in strides]
    maps = {n: (c, size // s, size // s) for n, s, c in zip(names, strides, widths)}
    return FeatureSpec(names=tuple(names), maps=maps, model="CNN", input_size=(size, size))


def _vit(blocks=12, width=192, grid=14) -> FeatureSpec:
    """A transformers ViT: the embedding's output, then the blocks' (tokens laid out as maps)."""
    names = ("embeddings", *(f"blocks.{i}" for i in range(blocks)))
    return FeatureSpec(
        names=names, maps={n: (width, grid, grid) for n in names}, model="ViT", input_size=(grid * 16,) * 2
    )


def test_two_cnns_meet_at_equal_strides_deepest_first():
    resnet = _cnn((2, 4, 8, 16, 32), (64, 64, 128, 256, 512))
    convnext = _cnn((4, 8, 16, 32), (40, 80, 160, 320))  # its first stage is dropped as the stem
    pairs = auto_pairs(resnet, convnext)
    assert pairs == [("s8", "s8"), ("s16", "s16"), ("s32", "s32")]
    # a CIFAR zoo CNN (strides 1, 1, 2, 4) against an ImageNet one: paired by depth, deepest with deepest
    zoo = _cnn((1, 1, 2, 4), (16, 16, 32, 64), size=32, names=["stem", "stage1", "stage2", "stage3"])
    assert auto_pairs(zoo, resnet) == [("stage1", "s8"), ("stage2", "s16"), ("stage3", "s32")]


def test_a_vit_gives_evenly_spaced_blocks_ending_with_the_last():
    vit, resnet = _vit(), _cnn((2, 4, 8, 16, 32), (64, 64, 128, 256, 512))
    assert network_stages(vit, "student", "x") == list(vit.names[1:])  # isotropic: every block but the first
    assert auto_pairs(vit, resnet) == [
        ("blocks.2", "s4"),
        ("blocks.5", "s8"),
        ("blocks.8", "s16"),
        ("blocks.11", "s32"),
    ]
    three = _cnn((2, 8, 16, 32), (16, 32, 64, 128))
    assert [s for s, _ in auto_pairs(vit, three)] == ["blocks.3", "blocks.7", "blocks.11"]
    assert [t for _, t in auto_pairs(_vit(4), vit)] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    assert [s for s, _ in auto_pairs(_vit(4), vit)] == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]


def test_a_hierarchical_network_keeps_the_deepest_layer_of_each_stride():
    spec = _cnn((2, 4, 4, 8, 8, 16), (8, 16, 16, 32, 32, 64), names=["a", "b", "c", "d", "e", "f"])
    assert network_stages(spec, "student", "x") == ["c", "e", "f"]


def test_each_method_takes_as_many_pairs_as_its_default_selector():
    assert [
        method_role(METHODS[m].hyperparameters()["student_layers"])
        for m in ("at", "sp", "fitnet", "fsp", "ft")
    ] == [
        "all",
        "deepest",
        "middle",
        "all",
        "deepest",
    ]


def test_auto_on_one_side_matches_the_named_layers_by_stride(networks):
    teacher, student = networks("resnet-mobilenetv3")
    built = _build("fitnet", teacher, student, teacher_layers="layer2")
    (pair,) = built.pairing["fitnet"]
    assert (pair.teacher, pair.student) == ("layer2", "blocks.1")  # both stride 8
    assert pair.teacher_shape[1:] == pair.student_shape[1:]


def test_explicit_names_still_win(networks, caplog):
    teacher, student = networks("resnet-mobilenetv3")
    obj = DistillationObjective(
        {"at": instantiate("at", {"student_layers": "blocks.0,blocks.5", "teacher_layers": "layer1,layer4"})},
        {"at": 1.0},
    )
    x, y, _ = _batch()
    with caplog.at_level(logging.INFO, logger="hf_distill.training.distillation_model"):
        built = build_distillation_model(
            student, teacher, obj, _rows(x, y), _collate, None, TeacherInput(SPEC, SPEC)
        )
    assert [(p.teacher, p.student, p.auto) for p in built.pairing["at"]] == [
        ("layer1", "blocks.0", False),
        ("layer4", "blocks.5", False),
    ]
    assert sum("at (named layers): teacher layer" in r.getMessage() for r in caplog.records) == 2


# -- the record: one log line per pair, data for the card --------------------------------------------------------------
def test_the_pairing_is_logged_once_and_kept_as_data(networks, caplog):
    teacher, student = networks("resnet-vit")
    with caplog.at_level(logging.INFO, logger="hf_distill.training.distillation_model"):
        built = _build("ab", teacher, student)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ab (auto pairing)")]
    pairs = built.pairing["ab"]
    # one line per pair (resnet10t's four stages, four of the ViT's blocks) plus the note that the timm networks
    # give no pre-activation maps (one per side)
    assert [ln for ln in lines if "connector:" in ln] == [f"ab (auto pairing): {p.line()}" for p in pairs]
    assert [p.student for p in pairs] == ["blocks.3", "blocks.6", "blocks.8", "blocks.11"]
    assert sum("read after their activation" in ln for ln in lines) == 2 and len(lines) == 6
    first = pairs[0]
    assert re.fullmatch(
        r"teacher layer\d \(\d+, \d+, \d+\) -> student blocks\.\d+ \(192, 4, 4\), connector: .+", first.line()
    )
    assert "1x1 conv 192->" in first.connector  # the student's width to the teacher's
    data = json.loads(json.dumps([p.as_dict() for p in pairs]))
    assert data[0]["teacher"] == first.teacher and data[0]["student_shape"] == [192, 4, 4] and data[0]["auto"]


def test_an_ensemble_pairs_each_teacher_on_its_own(networks):
    t1, student = networks("resnet-mobilenetv3")
    t2, _ = networks("convnext-efficientnet")
    obj = DistillationObjective({"at": instantiate("at", {"student_layers": AUTO})}, {"at": 1.0})
    x, y, _ = _batch()
    built = build_ensemble_distillation(
        student, TeacherEnsemble([t1, t2]), obj, _rows(x, y), _collate, None, SPEC
    )
    assert [p.teacher for p in built.pairing["at (teacher 1)"]][-1] == "layer4"
    assert [p.teacher for p in built.pairing["at (teacher 2)"]] == ["stages.1", "stages.2", "stages.3"]


# -- bad input: one line naming the network and the layer -------------------------------------------------------------
class _Outputs(nn.Module):
    """A transformers-like classifier (a ``config``, ``output_hidden_states``) whose hidden states are given."""

    def __init__(self, hidden: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.config = PretrainedConfig(num_labels=CLASSES)
        self.hidden = hidden
        self.classifier = nn.Linear(8, CLASSES)

    def forward(self, pixel_values, output_hidden_states=False, **kwargs):
        b = pixel_values.shape[0]
        scale = pixel_values.mean() * self.classifier.weight.sum()
        states = tuple(torch.ones(b, *s) * scale for s in self.hidden)
        return SimpleNamespace(logits=self.classifier(torch.ones(b, 8) * scale), hidden_states=states)


def test_auto_refuses_a_network_without_stages():
    student = _Outputs([(8,), (8,), (8,)])  # vectors only
    with pytest.raises(ValueError) as err:
        _build("at", create_cifar_model("resnet8", num_labels=CLASSES), student)
    msg = str(err.value)
    assert "no stages in the student (_Outputs)" in msg and "hidden_states.2 (8,)" in msg and "\n" not in msg


def test_tokens_that_form_no_square_grid_are_refused():
    student = _Outputs([(117, 8), (117, 8)])  # 117 tokens, no patch size: 10 x 10 would leave 17 in front
    with pytest.raises(ValueError) as err:
        _build("at", create_cifar_model("resnet8", num_labels=CLASSES), student)
    msg = str(err.value)
    assert "'hidden_states.0' of _Outputs" in msg and "no square patch grid" in msg and "\n" not in msg


def test_a_method_needing_equal_widths_without_a_connector_names_both_layers(networks):
    teacher, student = networks("resnet-mobilenetv3")
    with pytest.raises(ValueError) as err:
        _build("fsp", teacher, student)
    msg = str(err.value)
    assert "the student's layer 'blocks.0' (MobileNetV3) has 8 channels" in msg
    assert "the teacher's layer 'layer1' (ResNet) has 64" in msg and "\n" not in msg


def test_auto_stands_alone_and_needs_the_dry_run():
    with pytest.raises(ValueError, match="'auto' stands alone"):
        _build(
            "at",
            create_cifar_model("resnet20", num_labels=CLASSES),
            create_cifar_model("resnet8", num_labels=CLASSES),
            teacher_layers="auto,stage1",
        )
    with pytest.raises(ValueError, match="build_distillation_model"):
        resolve_selectors([AUTO], ["stem", "stage1"], "student")


# -- the Python API and the recipe ------------------------------------------------------------------------------------
def test_the_trainer_pairs_a_transformers_vit_with_a_zoo_cnn(subset_train, subset_test, tmp_path):
    from tests.helpers import tiny_splits, trainer_args
    from tests.methods._common import distill_trainer

    train, _ = tiny_splits(subset_train, subset_test)
    torch.manual_seed(0)
    teacher, student = _hf_vit(labels=10), create_cifar_model("resnet8", num_labels=10)
    obj = DistillationObjective.from_names("vid", method_kwargs={"vid": {"student_layers": AUTO}})
    trainer = distill_trainer(trainer_args(tmp_path, max_steps=1), obj, train.dataset, student, teacher)
    vid = trainer.model.objective.methods["vid"]
    assert [p.teacher for p in vid.pairing] == ["hidden_states.1", "hidden_states.3", "hidden_states.4"]
    assert vid.student_layer_names == ["stage1", "stage2", "stage3"]
    assert trainer.teacher_request.token_maps  # the trainer's teacher pass lays the tokens out as maps too
    trainer.train()
    assert any("loss_vid" in h for h in trainer.state.log_history)


def test_the_recipe_refuses_auto_beside_other_layers_in_one_line(capsys, tmp_path):
    import importlib.util

    from tests.conftest import REPO
    from tests.helpers import recipe_error_line

    spec = importlib.util.spec_from_file_location("distill_recipe", REPO / "recipes" / "distill.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    argv = [
        "--method",
        "at",
        "--at-student-layers",
        "auto,stage1",
        "--max_train_samples",
        "8",
        "--max_steps",
        "1",
    ]
    argv += ["--output_dir", str(tmp_path / "out")]
    line = recipe_error_line(recipe, capsys, argv)
    assert "'auto' stands alone" in line and "--at-student-layers" in line
