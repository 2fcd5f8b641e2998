"""recipes/distill.py: the embedded default on a tiny slice, and every bad input giving one clear line."""

import json
import subprocess
import sys

import datasets
import pytest

from tests.conftest import REPO, SUBSET, TEACHER_DIR
from tests.helpers import load_recipe
from tests.helpers import recipe_error_line as _fails

TINY = [
    "--max_train_samples",
    "64",
    "--max_eval_samples",
    "64",
    "--num_train_epochs",
    "1",
    "--disable_tqdm",
    "true",
]


def _out(tmp_path) -> list[str]:
    """An output folder of the test's own: a test never reads or writes the checkout's outputs/."""
    return ["--output_dir", str(tmp_path / "out")]


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("distill_recipe")


def test_default_run_on_a_tiny_slice(recipe, tmp_path):
    res = recipe.main(TINY + ["--output_dir", str(tmp_path)])
    assert 0.6 < res["eval_teacher_accuracy"] <= 1.0  # the pretrained resnet56 on 64 real test images
    assert 0.0 <= res["eval_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "all_results.json").read_text())
    assert saved["objective"]["methods"]["kd"]["temperature"] == 4.0
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()


def test_an_empty_teacher_trains_the_student_alone(recipe, tmp_path):
    """``--teacher ''`` switches the default teacher off: ``--method none`` trains a model alone (e.g. the teacher of
    a later run), without loading or evaluating any teacher; a method that needs one says so in one line."""
    res = recipe.main(["--teacher", "", "--method", "none", "--max_steps", "1"] + TINY + _out(tmp_path))
    assert "eval_teacher_accuracy" not in res and 0.0 <= res["eval_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["objective"]["methods"] == {}


def test_an_empty_teacher_with_a_method_that_needs_one(recipe, capsys, tmp_path):
    line = _fails(recipe, capsys, ["--teacher", "", "--method", "kd"] + TINY + _out(tmp_path))
    assert "needs a teacher: pass --teacher" in line


def test_method_flags_and_config_file(recipe, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("method: kd\nmethod_args: {kd: {temperature: 2.0}}\nce_weight: 0.5\nmax_steps: 1\n")
    res_dir = tmp_path / "out"
    recipe.main(["--config", str(cfg), "--kd-temperature", "3", "--output_dir", str(res_dir)] + TINY)
    obj = json.loads((res_dir / "all_results.json").read_text())["objective"]
    assert (
        obj["ce_weight"] == 0.5 and obj["methods"]["kd"]["temperature"] == 3.0
    )  # command line beats the file


def test_unknown_method(recipe, capsys):
    line = _fails(recipe, capsys, ["--method", "kdd"])
    assert "Unknown distillation method 'kdd'" in line and "kd" in line


def test_weight_list_of_wrong_length(recipe, capsys):
    line = _fails(recipe, capsys, ["--method", "kd", "--method_weights", "1,2"])
    assert "--method_weights has 2 value(s) but the methods are 1: kd" in line


def test_unknown_method_hyperparameter(recipe, capsys):
    line = _fails(recipe, capsys, ["--kd-temp", "2"])
    assert "has no hyperparameter 'temp'" in line and "temperature" in line


def test_teacher_and_dataset_class_counts_differ(recipe, capsys, tmp_path):
    three = datasets.load_dataset(str(SUBSET), split="train").filter(lambda r: r["label"] < 3)
    three = three.cast_column("label", datasets.ClassLabel(names=["airplane", "automobile", "bird"]))
    three.to_parquet(str(tmp_path / "three.parquet"))
    line = _fails(
        recipe, capsys, ["--dataset", str(tmp_path / "three.parquet"), "--eval_split", "", *_out(tmp_path)]
    )
    assert "teacher predicts 10 classes but the student 3" in line


def test_dataset_without_label_column(recipe, capsys, tmp_path):
    ds = datasets.load_dataset(str(SUBSET), split="test").select(range(8)).remove_columns("label")
    ds.to_parquet(str(tmp_path / "nolabel.parquet"))
    line = _fails(
        recipe, capsys, ["--dataset", str(tmp_path / "nolabel.parquet"), "--eval_split", "", *_out(tmp_path)]
    )
    assert "no label column" in line and "--label_column" in line


def test_image_column_that_is_not_images(recipe, capsys, tmp_path):
    line = _fails(recipe, capsys, ["--image_column", "label", *_out(tmp_path)])
    assert "Column 'label' is not an image column" in line


def test_teacher_checkpoint_of_another_architecture(recipe, capsys, tmp_path):
    weights = str(TEACHER_DIR / "model.safetensors")  # a resnet56 (option A) state dict
    line = _fails(
        recipe, capsys, ["--teacher", "cifar_resnet20_a", "--teacher_weights", weights, *_out(tmp_path)]
    )
    assert "does not match the teacher architecture" in line


def test_akamaster_checkpoint_of_another_depth(recipe, capsys, tmp_path):
    from tests.models.test_convert_akamaster import write_akamaster_checkpoint

    weights = str(write_akamaster_checkpoint(TEACHER_DIR, tmp_path / "akamaster" / "resnet56-4bfd9763.th"))
    line = _fails(
        recipe, capsys, ["--teacher", "cifar_resnet20_a", "--teacher_weights", weights, *_out(tmp_path)]
    )
    assert "resnet56" in line


def test_bad_input_exit_code_from_the_command_line():
    p = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "distill.py"), "--method", "nope"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: Unknown distillation method 'nope'")
    assert "Traceback" not in p.stderr


def test_a_bad_argument_is_reported_before_the_output_folder(recipe, capsys, tmp_path):
    """A folder that already holds a run is not the mistake to report when an argument is wrong: the user fixes the
    argument first (the README's first command leaves outputs/default behind)."""
    held = tmp_path / "held"
    held.mkdir()
    (held / "model.safetensors").write_bytes(b"x")
    line = _fails(
        recipe, capsys, ["--method", "at", "--at-student-layers", "stage9", "--output_dir", str(held)]
    )
    assert "'stage9' does not exist in the student" in line
    line = _fails(
        recipe, capsys, TINY + ["--output_dir", str(held)]
    )  # a good run: now the folder is the problem
    assert "already holds files" in line


def test_feature_layer_that_does_not_exist(recipe, capsys, tmp_path):
    line = _fails(recipe, capsys, ["--method", "at", "--at-student-layers", "stage9", *_out(tmp_path)])
    assert "'stage9' does not exist in the student" in line and "stem, stage1, stage2, stage3" in line


def test_the_default_data_is_the_first_100_images_of_each_class(recipe):
    """assets/cifar10-1k, the default run's data (the README's measured configuration), is the first 100 rows of each
    class of assets/cifar10-subset with the same test images."""
    import pyarrow.parquet as pq

    one_k, subset = REPO / "assets" / "cifar10-1k", REPO / "assets" / "cifar10-subset"
    assert recipe.DEFAULTS["dataset"] == str(one_k) and recipe.DEFAULTS["num_train_epochs"] == 60
    full = pq.read_table(subset / "train.parquet").to_pydict()
    taken = {c: 0 for c in range(10)}
    first = []
    for i, y in enumerate(full["label"]):
        if taken[y] < 100:
            taken[y] += 1
            first.append(i)
    train = pq.read_table(one_k / "train.parquet").to_pydict()
    assert train["label"] == [full["label"][i] for i in first] and len(first) == 1000
    assert train["img"] == [full["img"][i] for i in first]
    assert (one_k / "test.parquet").read_bytes() == (subset / "test.parquet").read_bytes()
