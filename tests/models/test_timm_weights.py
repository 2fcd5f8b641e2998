"""``--teacher_weights FILE`` into a timm architecture: a timm state dict (the keys of the timm module, as timm's
training script saves them, under ``state_dict`` or bare) loads into the wrapper's timm module, and a Swin
checkpoint of timm < 0.9 (downsample at the end of a stage, ``head.`` for ``head.fc.``) through timm's own
conversion. A file of another architecture is still one line naming the mismatch."""

from __future__ import annotations

import re

import pytest
import timm
import torch

from hf_distill.models.loading import ModelLoadError, load_model


def _same(model, sd):
    own = model.timm_model.state_dict()
    return all(torch.equal(own[k], v) for k, v in sd.items())


def test_a_timm_state_dict_loads_into_the_timm_architecture(tmp_path):
    sd = timm.create_model("resnet18", num_classes=100).state_dict()
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "resnet18.pth")
    teacher = load_model("resnet18", num_labels=100, weights=str(tmp_path / "resnet18.pth"), role="teacher")
    assert _same(teacher, sd)


def test_an_old_timm_swin_checkpoint_is_converted(tmp_path):
    new = timm.create_model("swin_tiny_patch4_window7_224", num_classes=100).state_dict()
    old = {}  # timm 0.6's layout of the same weights
    for k, v in new.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        old[k.replace("head.fc.", "head.")] = v
    old["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    torch.save({"state_dict": old}, tmp_path / "swin.pth")
    teacher = load_model(
        "swin_tiny_patch4_window7_224", num_labels=100, weights=str(tmp_path / "swin.pth"), role="teacher"
    )
    assert _same(teacher, new)


def test_another_architecture_is_one_line(tmp_path):
    torch.save(timm.create_model("resnet18", num_classes=100).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ModelLoadError, match="does not match the teacher architecture") as e:
        load_model("mobilenetv2_100", num_labels=100, weights=str(tmp_path / "resnet18.pth"), role="teacher")
    assert "\n" not in str(e.value)
