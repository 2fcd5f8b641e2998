"""Conversion of the pretrained akamaster CIFAR-10 ResNets (real checkpoints from ../shared)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_distill.models.convert_akamaster import (
    CIFAR10_LABELS,
    blocks_per_stage,
    is_akamaster_state_dict,
    load_akamaster_checkpoint,
    main,
    read_akamaster_state_dict,
)
from hf_distill.models.modeling_cifar import CifarForImageClassification
from tests.conftest import SHARED

TEACHERS = SHARED / "teachers" / "cifar10-resnet-akamaster"
TEST_PARQUET = SHARED / "data" / "cifar10" / "test.parquet"
RESNET20 = TEACHERS / "resnet20-12fca82f.th"
RESNET56 = TEACHERS / "resnet56-4bfd9763.th"

needs_teachers = pytest.mark.skipif(
    not (RESNET20.is_file() and RESNET56.is_file()),
    reason=f"the akamaster checkpoints are not there ({TEACHERS.resolve()} is missing)",
)
needs_data = pytest.mark.skipif(
    not TEST_PARQUET.is_file(),
    reason=f"the CIFAR-10 test split is not there ({TEST_PARQUET.resolve()} is missing)",
)


@pytest.fixture(scope="module")
def cifar10_test_head() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 200 test images, normalized with the ImageNet statistics the checkpoints were trained with."""
    pq = pytest.importorskip("pyarrow.parquet")
    image_mod = pytest.importorskip("PIL.Image")
    rows = pq.read_table(TEST_PARQUET, columns=["img", "label"]).slice(0, 200).to_pylist()
    arrays = [np.asarray(image_mod.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")) for r in rows]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor([r["label"] for r in rows])


@needs_teachers
def test_checkpoint_layout() -> None:
    state = read_akamaster_state_dict(RESNET20)
    assert not any(k.startswith("module.") for k in state)
    assert blocks_per_stage(state) == 3
    assert blocks_per_stage(read_akamaster_state_dict(RESNET56)) == 9
    assert is_akamaster_state_dict(state)
    assert is_akamaster_state_dict({"module." + k: v for k, v in state.items()})


def test_is_akamaster_state_dict_rejects_other_layouts() -> None:
    from hf_distill.models.cifar_resnet import resnet20, resnet20_a

    assert not is_akamaster_state_dict(resnet20_a().state_dict())  # our own names
    repdistiller_like = {
        "conv1.weight": 0,
        "bn1.weight": 0,
        "layer1.0.conv1.weight": 0,
        "layer2.0.downsample.0.weight": 0,
        "linear.weight": 0,
    }
    assert not is_akamaster_state_dict(repdistiller_like)
    assert not is_akamaster_state_dict(resnet20().state_dict())


@needs_teachers
@needs_data
@pytest.mark.parametrize(
    ("path", "arch", "min_acc"), [(RESNET20, "resnet20_a", 0.7), (RESNET56, "resnet56_a", 0.7)]
)
def test_real_checkpoint_predicts_cifar10(
    path: Path, arch: str, min_acc: float, cifar10_test_head: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model = load_akamaster_checkpoint(path)  # depth inferred
    assert isinstance(model, CifarForImageClassification) and not model.training
    assert model.config.architecture == arch
    assert [model.config.id2label[i] for i in range(10)] == CIFAR10_LABELS
    x, y = cifar10_test_head
    with torch.no_grad():
        pred = model(x).logits.argmax(-1)
    acc = (pred == y).float().mean().item()
    # publisher: 91.8 / 93.6 % on the PNG test set; about 81 / 83 % on this JPEG copy
    assert acc > min_acc, f"{arch}: accuracy {acc:.3f} on the first 200 test images"


@needs_teachers
def test_wrong_depth_gives_one_clear_sentence() -> None:
    with pytest.raises(ValueError) as info:
        load_akamaster_checkpoint(RESNET20, depth=56)
    msg = str(info.value)
    assert "cifar_resnet56_a" in msg and "missing keys" in msg
    assert "holds a resnet20 (3 blocks per stage)" in msg and "cifar_resnet20_a" in msg
    assert "\n" not in msg and msg.endswith(".")
    with pytest.raises(ValueError, match="unexpected keys .*holds a resnet56"):
        load_akamaster_checkpoint(RESNET56, depth=20)
    with pytest.raises(ValueError, match="valid depths are"):
        load_akamaster_checkpoint(RESNET20, depth=21)


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    from hf_distill.models.cifar_resnet import resnet20_a

    # a synthetic akamaster-style checkpoint whose stage-3 widths are wrong
    ours = resnet20_a().state_dict()
    state = {}
    for key, value in ours.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("stem.conv.", "conv1.").replace("stem.bn.", "bn1.").replace("fc.", "linear.")
        key = key.replace("stage", "layer")
        state["module." + key] = value
    state["module.layer3.2.conv2.weight"] = torch.zeros(64, 32, 3, 3)
    path = tmp_path / "broken.th"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match=r"1 shape mismatches \(model.stage3.2.conv2.weight"):
        load_akamaster_checkpoint(path)


@needs_teachers
def test_cli_writes_a_transformers_folder(tmp_path: Path) -> None:
    out = tmp_path / "resnet20"
    main([str(RESNET20), str(out)])
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet20_a" and config["id2label"]["3"] == "cat"
    assert "AutoModelForImageClassification" in config["auto_map"]
    if (TEACHERS / "LICENSE").is_file():
        assert (out / "LICENSE").read_text() == (TEACHERS / "LICENSE").read_text()
    reloaded = CifarForImageClassification.from_pretrained(out).eval()
    original = load_akamaster_checkpoint(RESNET20)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, original(x).logits, rtol=0, atol=0)
