"""transformers wrapper of the CIFAR zoo: config, model, save/load, remote code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

from hf_distill.models.cifar_common import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD
from hf_distill.models.configuration_cifar import CifarConfig
from hf_distill.models.modeling_cifar import CifarForImageClassification, create_cifar_model
from tests.conftest import REPO

MODELS_DIR = REPO / "hf_distill" / "models"
REMOTE_FILES = [
    "cifar_common.py",
    "cifar_resnet.py",
    "cifar_wrn.py",
    "cifar_vgg.py",
    "cifar_mobilenetv2.py",
    "cifar_shufflenet.py",
    "configuration_cifar.py",
    "modeling_cifar.py",
]


IMAGES_BATCH = 3  # the `images` fixture (conftest.py) gives 3 images here


def test_remote_code_files_import_only_torch_transformers_and_each_other() -> None:
    stdlib = set(sys.stdlib_module_names)
    for name in REMOTE_FILES:
        tree = ast.parse((MODELS_DIR / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: a flat sibling file
                    assert node.level == 1 and node.module and "." not in node.module, (name, node.module)
                    assert f"{node.module}.py" in REMOTE_FILES, (name, node.module)
                    continue
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                allowed = {"torch", "__future__"} | (
                    {"transformers"} if name.endswith("_cifar.py") else set()
                )
                assert root in stdlib or root in allowed, f"{name} imports {root}"


def test_config_defaults_and_validation() -> None:
    cfg = CifarConfig(architecture="resnet56", num_labels=100)
    assert cfg.model_type == "hf_distill_cifar"
    assert cfg.num_labels == 100 and cfg.image_size == 32
    assert tuple(cfg.image_mean) == CIFAR100_MEAN and tuple(cfg.image_std) == CIFAR100_STD
    cfg_a = CifarConfig(architecture="cifar_resnet56_a", id2label={0: "a", 1: "b"})
    assert cfg_a.architecture == "resnet56_a" and cfg_a.num_labels == 2
    assert tuple(cfg_a.image_mean) == IMAGENET_MEAN and tuple(cfg_a.image_std) == IMAGENET_STD
    assert cfg_a.label2id == {"a": 0, "b": 1}
    custom = CifarConfig(architecture="vgg8", image_mean=[0.5, 0.5, 0.5], image_std=[0.25] * 3)
    assert custom.image_mean == [0.5, 0.5, 0.5] and custom.image_std == [0.25] * 3
    with pytest.raises(
        ValueError, match=r"Unknown CIFAR architecture 'resnet57'; valid names are: .*wrn_40_2"
    ):
        CifarConfig(architecture="resnet57")


@pytest.mark.parametrize(
    "arch", ["resnet20", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv2", "resnet20_a"]
)
def test_forward_outputs(arch: str, images: torch.Tensor) -> None:
    model = create_cifar_model(arch, num_labels=5).eval()
    labels = torch.tensor([0, 3, 4])
    with torch.no_grad():
        out = model(pixel_values=images, labels=labels, output_hidden_states=True)
        maps, emb, logits = model.forward_taps(images)
        plain = model(images)
        as_tuple = model(images, labels=labels, return_dict=False)
    assert isinstance(out, ImageClassifierOutput)
    assert out.logits.shape == (3, 5)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(plain.logits, logits, rtol=0, atol=0)
    assert plain.hidden_states is None and plain.loss is None
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, labels))
    assert len(out.hidden_states) == len(model.feature_names)
    for h, m in zip(out.hidden_states, maps.values()):
        torch.testing.assert_close(h, m, rtol=0, atol=0)
    assert model.feature_names == model.model.feature_names and emb.shape == (3, model.num_features)
    assert as_tuple[0].ndim == 0 and as_tuple[1].shape == (3, 5)


def test_backbone_initialisation_survives_the_wrapper() -> None:
    torch.manual_seed(0)
    model = create_cifar_model("vgg8", num_labels=100)
    fc = model.model.fc
    assert abs(fc.weight.std().item() - 0.01) < 1e-3 and torch.all(fc.bias == 0)
    conv = model.model.stem[0]  # Normal(0, sqrt(2 / (3*3*64))) = 0.059 (transformers' default would be 0.02)
    assert abs(conv.weight.std().item() / (2 / (9 * 64)) ** 0.5 - 1) < 0.05 and torch.all(conv.bias == 0)
    bn = model.model.stem[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    res = create_cifar_model("resnet56", num_labels=10)  # Kaiming normal, fan_out: sqrt(2 / (3*3*16)) = 0.118
    assert abs(res.model.stem.conv.weight.std().item() / (2 / (9 * 16)) ** 0.5 - 1) < 0.15


@pytest.mark.parametrize("arch", ["resnet32x4", "wrn_16_2", "mobilenetv2", "shufflenetv1", "resnet20_a"])
def test_save_and_reload_identical(arch: str, tmp_path: Path, images: torch.Tensor) -> None:
    id2label = {i: f"class_{i}" for i in range(7)}
    model = create_cifar_model(arch, num_labels=7, id2label=id2label).eval()
    with torch.no_grad():  # make BN statistics non-trivial so they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_cifar.CifarConfig",
        "AutoModelForImageClassification": "modeling_cifar.CifarForImageClassification",
    }
    assert config["architecture"] == arch and config["model_type"] == "hf_distill_cifar"
    assert (tmp_path / "model.safetensors").is_file()
    assert {p.name for p in tmp_path.glob("*.py")} == set(REMOTE_FILES)

    reloaded = CifarForImageClassification.from_pretrained(tmp_path).eval()
    auto = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(auto, CifarForImageClassification)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), CifarConfig)
    assert auto.config.id2label == id2label
    with torch.no_grad():
        ref = model(images).logits
        torch.testing.assert_close(reloaded(images).logits, ref, rtol=0, atol=0)
        torch.testing.assert_close(auto(images).logits, ref, rtol=0, atol=0)


def test_arch_kwargs_round_trip(tmp_path: Path) -> None:
    model = create_cifar_model("wrn_16_2", num_labels=10, drop_rate=0.3)
    assert model.model.stage1[0].drop_rate == 0.3
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert reloaded.config.arch_kwargs == {"drop_rate": 0.3}
    assert reloaded.model.stage1[0].drop_rate == 0.3


def test_new_head_on_reload_uses_the_architecture_init(tmp_path: Path, images: torch.Tensor) -> None:
    create_cifar_model("vgg8", num_labels=10).save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_pretrained(
        tmp_path, num_labels=100, ignore_mismatched_sizes=True
    )
    fc = model.model.fc
    assert fc.weight.shape == (100, 512)
    assert abs(fc.weight.std().item() - 0.01) < 1e-3 and torch.all(fc.bias == 0)
    assert model.eval()(images).logits.isfinite().all()


_REMOTE_SCRIPT = """
import sys
sys.modules["hf_distill"] = None  # not installed on the machine that loads the folder
sys.modules["timm"] = None
import torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.testing.assert_close(model(x).logits, torch.load(sys.argv[3]), rtol=0, atol=0)
print("REMOTE OK", model.config.architecture, model.feature_names)
"""


def test_loads_as_remote_code_without_hf_distill_or_timm(tmp_path: Path, images: torch.Tensor) -> None:
    model = create_cifar_model("wrn_16_1", num_labels=10).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    with torch.no_grad():
        torch.save(model(images).logits, tmp_path / "logits.pt")
    torch.save(images, tmp_path / "x.pt")
    script = tmp_path / "load.py"
    script.write_text(_REMOTE_SCRIPT)
    env_cwd = tmp_path  # not the repository, so hf_distill is not importable from the working directory
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "x.pt"), str(tmp_path / "logits.pt")],
        cwd=env_cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE OK wrn_16_1" in result.stdout
