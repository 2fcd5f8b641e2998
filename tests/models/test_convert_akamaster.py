"""Conversion of the pretrained akamaster CIFAR-10 ResNets.

The checkpoints are rebuilt in akamaster's own layout (``{"state_dict": {"module.conv1.weight": ...}}``, no BN
counters) from the committed conversions under ``assets/`` (the publisher's weights, unchanged), so these tests run in
any clone; the one test that compares with the publisher's original files is in ``tests/models/test_teacher.py``.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
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
from tests.conftest import STUDENT_INIT_DIR, SUBSET, TEACHER_DIR

#: our key names -> akamaster's (the converter's renames, inverted)
_TO_AKAMASTER = [
    (r"^model\.stem\.conv\.", "conv1."),
    (r"^model\.stem\.bn\.", "bn1."),
    (r"^model\.stage([123])\.", r"layer\1."),
    (r"^model\.fc\.", "linear."),
]


def write_akamaster_checkpoint(folder: Path, path: Path) -> Path:
    """Write the committed conversion in ``folder`` back as an akamaster ``.th`` file at ``path`` (DataParallel
    ``module.`` prefix, ``best_prec1``, no ``num_batches_tracked``: the publisher's layout), with its LICENSE beside."""
    state = {}
    for key, value in safetensors.torch.load_file(str(folder / "model.safetensors")).items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, repl in _TO_AKAMASTER:
            key = re.sub(pattern, repl, key)
        state["module." + key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "best_prec1": 0.0}, path)
    shutil.copy(folder / "LICENSE", path.parent / "LICENSE")
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """resnet20 and resnet56 in akamaster's file layout, named as the publisher names them."""
    root = tmp_path_factory.mktemp("akamaster")
    return {
        "resnet20": write_akamaster_checkpoint(STUDENT_INIT_DIR, root / "resnet20-12fca82f.th"),
        "resnet56": write_akamaster_checkpoint(TEACHER_DIR, root / "resnet56-4bfd9763.th"),
    }


@pytest.fixture(scope="module")
def cifar10_test_head() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 200 committed test images, normalized with the ImageNet statistics the checkpoints were trained
    with."""
    import PIL.Image
    import pyarrow.parquet as pq

    rows = pq.read_table(SUBSET / "test.parquet", columns=["img", "label"]).slice(0, 200).to_pylist()
    arrays = [np.asarray(PIL.Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")) for r in rows]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor([r["label"] for r in rows])


def test_checkpoint_layout(checkpoints) -> None:
    state = read_akamaster_state_dict(checkpoints["resnet20"])
    assert not any(k.startswith("module.") for k in state)
    assert blocks_per_stage(state) == 3
    assert blocks_per_stage(read_akamaster_state_dict(checkpoints["resnet56"])) == 9
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


@pytest.mark.parametrize(("depth", "min_acc"), [(20, 0.7), (56, 0.7)])
def test_real_checkpoint_predicts_cifar10(
    depth: int, min_acc: float, checkpoints, cifar10_test_head: tuple[torch.Tensor, torch.Tensor]
) -> None:
    arch = f"resnet{depth}_a"
    model = load_akamaster_checkpoint(checkpoints[f"resnet{depth}"])  # depth inferred
    assert isinstance(model, CifarForImageClassification) and not model.training
    assert model.config.architecture == arch
    assert [model.config.id2label[i] for i in range(10)] == CIFAR10_LABELS
    x, y = cifar10_test_head
    with torch.no_grad():
        pred = model(x).logits.argmax(-1)
    acc = (pred == y).float().mean().item()
    # publisher: 91.8 / 93.6 % on the PNG test set; about 82 / 84 % on these JPEG images
    assert acc > min_acc, f"{arch}: accuracy {acc:.3f} on the first 200 test images"


def test_wrong_depth_gives_one_clear_sentence(checkpoints) -> None:
    resnet20, resnet56 = checkpoints["resnet20"], checkpoints["resnet56"]
    with pytest.raises(ValueError) as info:
        load_akamaster_checkpoint(resnet20, depth=56)
    msg = str(info.value)
    assert "cifar_resnet56_a" in msg and "missing keys" in msg
    assert "holds a resnet20 (3 blocks per stage)" in msg and "cifar_resnet20_a" in msg
    assert "\n" not in msg and msg.endswith(".")
    with pytest.raises(ValueError, match="unexpected keys .*holds a resnet56"):
        load_akamaster_checkpoint(resnet56, depth=20)
    with pytest.raises(ValueError, match="valid depths are"):
        load_akamaster_checkpoint(resnet20, depth=21)


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


def test_cli_writes_a_transformers_folder(tmp_path: Path, checkpoints) -> None:
    resnet20 = checkpoints["resnet20"]
    out = tmp_path / "resnet20"
    main([str(resnet20), str(out)])
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet20_a" and config["id2label"]["3"] == "cat"
    assert "AutoModelForImageClassification" in config["auto_map"]
    assert (out / "LICENSE").read_text() == (resnet20.parent / "LICENSE").read_text()
    reloaded = CifarForImageClassification.from_pretrained(out).eval()
    original = load_akamaster_checkpoint(resnet20)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, original(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("depth, folder", [(20, STUDENT_INIT_DIR), (56, TEACHER_DIR)])
def test_conversion_maps_every_tensor_onto_its_place(depth, folder, checkpoints) -> None:
    """akamaster names -> ours: every tensor of the file lands where the committed conversion has it (BN counters
    absent from the file start at 0)."""
    converted = load_akamaster_checkpoint(checkpoints[f"resnet{depth}"]).state_dict()
    committed = safetensors.torch.load_file(str(folder / "model.safetensors"))
    assert converted.keys() == committed.keys()
    for key, value in converted.items():
        expected = torch.zeros_like(value) if key.endswith("num_batches_tracked") else committed[key]
        assert torch.equal(value, expected), key
