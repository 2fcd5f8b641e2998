"""The ImageNet configs (recipes/configs/imagenet/): generated, and every one trains two steps through the recipe on a
tiny ImageNet-shaped dataset (1000 classes, 224 px) with a random-weight timm teacher of the config's architecture."""

import json
import subprocess
import sys

import pytest
import yaml

from recipes.distill import main
from tests.conftest import REPO
from tests.helpers import write_image_dataset

GENERATOR = REPO / "recipes" / "configs" / "make_imagenet_configs.py"
CONFIGS = sorted((REPO / "recipes" / "configs" / "imagenet").rglob("*.yaml"))
#: the one config that also runs at the configs' own 224 px (the others at 64 px, to keep the test short on a CPU)
FULL_SIZE = "kd/resnet34_resnet18.yaml"


def test_committed_configs_equal_the_generator_output():
    p = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, cwd=str(REPO)
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(CONFIGS) == 14  # 7 methods x 2 pairs


@pytest.fixture(scope="module")
def imagenet_shaped(tmp_path_factory):
    """A dataset folder laid out as ILSVRC/imagenet-1k (train and validation splits, 1000 classes) with 24 + 4 JPEG
    images of 224 x 224."""
    folder = tmp_path_factory.mktemp("imagenet")
    names = [f"n{i:08d}" for i in range(1000)]
    write_image_dataset(folder, "image", "label", names, {"train": 24, "validation": 4}, 224, "JPEG")
    return folder


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_trains_two_steps(config, imagenet_shaped, tmp_path, one_thread):
    cfg = yaml.safe_load(config.read_text())
    teacher_arch = cfg["teacher"].removeprefix("timm/").split(".")[0]  # the architecture, with random weights
    full = config.relative_to(config.parents[1]).as_posix() == FULL_SIZE
    argv = [
        "--config", str(config), "--dataset", str(imagenet_shaped), "--teacher", teacher_arch,
        "--allow_untrained_teacher", "true", "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--max_eval_samples", "2",
        "--dataloader_num_workers", "0", "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    if not full:
        argv += ["--image_size", "64"]
    if cfg["method"] == "crd":
        argv += ["--crd-nce-k", "8"]  # a memory bank of 24 rows
    results = main(argv)
    objective = json.loads((tmp_path / "out" / "all_results.json").read_text())["objective"]
    assert set(objective["methods"]) <= {"kd", "at", "ofd", "crd", "reviewkd", "dkd"}
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["architecture"] == cfg["student"] and saved["num_classes"] == 1000
