"""A student is saved with the evaluation its accuracy was measured with, on a non-square image exactly:

* a timm student records it in its config (data.transforms.record_eval_transform), and its timm-format export
  (hub/timm_export.py) says the same: timm's own transform from the exported ``pretrained_cfg`` gives our tensor.
  Before, the export always wrote a crop of 1.0 with bilinear interpolation, and the saved folder kept the
  architecture's defaults (224 px, crop 0.875), whatever --image_size, --crop_pct or the pipeline had been;
* a transformers student with an image processor is saved with the processor its evaluation ran
  (``ImagePipeline.eval_processor``): ``AutoImageProcessor`` on the saved folder gives our tensor. Before, the folder
  got a generic resize-to-square processor, whatever the model's own processor or --crop_pct said."""

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


@pytest.fixture
def processor_student(tmp_path):
    """A small transformers ViT saved with its own image processor (a 32 px bicubic square resize)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=10,
    )  # fmt: skip
    folder = tmp_path / "student"
    ViTForImageClassification(config).save_pretrained(folder)
    bicubic = PIL.Image.Resampling.BICUBIC  # not the bilinear of the generic processor the folder used to get
    ViTImageProcessor(
        size={"height": 32, "width": 32}, resample=bicubic, image_mean=[0.5] * 3, image_std=[0.25] * 3
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("crop_pct", [None, 0.9])
def test_a_processor_student_is_saved_with_the_processor_its_evaluation_ran(
    tmp_path, processor_student, crop_pct
):
    from transformers import AutoImageProcessor

    out = tmp_path / "out"
    argv = [
        "--dataset", str(SUBSET), "--teacher", str(TEACHER_DIR), "--student", str(processor_student),
        "--output_dir", str(out), "--max_steps", "1", "--max_train_samples", "16", "--max_eval_samples", "16",
        "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--save_strategy", "no",
    ]  # fmt: skip
    load_recipe().main(argv + (["--crop_pct", str(crop_pct)] if crop_pct else []))
    from transformers import AutoModelForImageClassification

    pipeline = model_pipeline(
        AutoModelForImageClassification.from_pretrained(str(processor_student)), "auto", None, crop_pct
    )
    assert pipeline.kind == "processor"
    saved = AutoImageProcessor.from_pretrained(str(out))
    image = _image()
    theirs = saved(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pipeline.eval(image), theirs, atol=1e-6, rtol=0)
    if crop_pct:  # resize the shorter side to 32 / 0.9, then a center crop: not the model's square resize
        assert saved.size["shortest_edge"] == 35 and saved.crop_size["height"] == 32
