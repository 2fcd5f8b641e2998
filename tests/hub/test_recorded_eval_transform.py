"""A timm student saves the evaluation its accuracy was measured with (data.transforms.record_eval_transform), and
its timm-format export (hub/timm_export.py) says the same: timm's own transform built from the exported
``pretrained_cfg`` gives the tensor our evaluation gave, on a non-square image. Before, the export always wrote a
crop of 1.0 with bilinear interpolation, and the saved folder kept the architecture's defaults (224 px, crop
0.875), whatever --image_size, --crop_pct or the pipeline had been."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from hf_distill.data.transforms import model_pipeline, record_eval_transform
from hf_distill.hub.timm_export import save_timm_folder, timm_data_config
from hf_distill.models.normalization import InputSpec
from tests.conftest import SUBSET, TEACHER_DIR
from tests.helpers import load_recipe, timm_model


def _image(width=57, height=41, seed=0) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def _timm_eval(config_json: dict):
    from timm.data import create_transform, resolve_data_config

    return create_transform(
        **resolve_data_config({}, pretrained_cfg=config_json["pretrained_cfg"]), is_training=False
    )


@pytest.mark.parametrize(
    "kind, image_size, crop_pct",
    [("timm", 48, 0.9), ("timm", None, None), ("cifar", 40, None)],
)
def test_the_export_preprocesses_as_the_evaluation_did(tmp_path, kind, image_size, crop_pct):
    student = timm_model("test_vit")
    pipeline = model_pipeline(student, kind, image_size, crop_pct)
    assert record_eval_transform(student, pipeline)
    saved = student.config.pretrained_cfg
    assert saved["input_size"][-1] == pipeline.image_size
    if crop_pct is not None:
        assert saved["crop_pct"] == crop_pct
    save_timm_folder(student, tmp_path, InputSpec(pipeline.mean, pipeline.std, pipeline.image_size))
    exported = json.loads((tmp_path / "config.json").read_text())
    image = _image()
    ours = pipeline.eval(image)
    theirs = _timm_eval(exported)(image)
    assert ours.shape == theirs.shape == (3, pipeline.image_size, pipeline.image_size)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_a_folder_without_a_recorded_evaluation_keeps_the_cifar_default():
    spec = InputSpec((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32)
    assert timm_data_config(spec, {"mean": [0.5] * 3}) == {
        "input_size": (3, 32, 32),
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
    }


def test_the_recipe_saves_a_timm_student_with_its_evaluation(tmp_path):
    out = tmp_path / "out"
    recipe = load_recipe()
    recipe.main(
        [
            "--dataset", str(SUBSET), "--teacher", str(TEACHER_DIR), "--student", "test_vit", "--output_dir",
            str(out), "--train_transform", "timm", "--image_size", "48", "--crop_pct", "0.8", "--max_steps", "1",
            "--max_train_samples", "16", "--max_eval_samples", "16", "--per_device_train_batch_size", "8",
            "--disable_tqdm", "true", "--save_strategy", "no",
        ]
    )  # fmt: skip
    saved = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert saved["input_size"] == [3, 48, 48] and saved["crop_pct"] == 0.8
    # the folder reloads with that evaluation: the same pipeline is rebuilt from it
    from transformers import AutoModelForImageClassification

    reloaded = model_pipeline(AutoModelForImageClassification.from_pretrained(str(out)), "timm")
    assert reloaded.image_size == 48 and reloaded.eval_data_config["crop_pct"] == 0.8


def test_an_image_size_the_student_cannot_take_is_one_line_and_writes_nothing(tmp_path, capsys):
    from tests.helpers import recipe_error_line

    out = tmp_path / "out"
    line = recipe_error_line(
        load_recipe(),
        capsys,
        [
            "--dataset", str(SUBSET), "--teacher", str(TEACHER_DIR), "--student", "test_vit", "--output_dir",
            str(out), "--train_transform", "timm", "--image_size", "40", "--max_steps", "1",
            "--max_train_samples", "16", "--max_eval_samples", "16", "--disable_tqdm", "true",
        ],
    )  # fmt: skip
    assert line.startswith(
        "error: The student (TimmWrapperForImageClassification) cannot run on 40x40 px inputs:"
    )
    assert "divisible by patch size (16)" in line and "--image_size" in line
    assert not out.exists()
