"""benchmarks/beyond_cifar.py on its dry path: a few images, one step per phase, random weights, the three phases
through ``hf_distill.distill``, and a results file that reads back consistently."""

import importlib.util
import json
import re
import shlex

import pytest

from benchmarks import beyond_cifar
from hf_distill.run.config import parse_args
from tests.conftest import ASSETS, REPO

TINY = ["--source", str(ASSETS / "cifar10-1k"), "--per_class", "2", "--eval_samples", "16", "--max_steps", "1",
        "--batch_size", "8", "--loader_rows", "8", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("beyond_cifar")
    argv = [*TINY, "--cache_dir", str(tmp / "cache"), "--work_dir", str(tmp / "work")]
    record = beyond_cifar.main([*argv, "--results", str(tmp / "r.json")])
    return tmp, argv, record


def test_three_phases_train_and_the_file_reads_back(dry_run):
    tmp, _, record = dry_run
    assert json.loads((tmp / "r.json").read_text()) == record
    phases = record["phases"]
    assert list(phases) == list(beyond_cifar.PHASES)
    assert phases["teacher"]["model"] == "resnet10t" and phases["teacher"]["method"] == "none"
    assert phases["baseline"]["model"] == phases["kd"]["model"] == "mobilenetv3_small_100"
    assert phases["kd"]["objective"]["methods"].keys() == {"kd"}
    assert phases["baseline"]["objective"]["methods"] == {}
    for row in phases.values():
        assert 0 <= row["top1"] <= 1 and row["steps"] == 1 and row["train_rows"] == 20
        assert row["train_images_per_s"] > 0 and row["wall_seconds"] >= row["train_seconds"] > 0
        assert row["load_average"]["max"] >= row["load_average"]["mean"] > 0
    # the student is distilled from the folder the teacher phase saved, evaluated there too
    assert phases["kd"]["teacher"] == "resnet10t" and 0 <= phases["kd"]["teacher_top1"] <= 1
    assert (tmp / "work" / "teacher" / "config.json").exists()
    summary = record["summary"]
    assert summary["kd_gain_points"] == pytest.approx(
        100 * (summary["kd_top1"] - summary["baseline_top1"]), abs=0.01
    )


def test_arguments_are_recorded_without_local_paths(dry_run):
    tmp, _, record = dry_run
    kd = record["phases"]["kd"]["arguments"]
    assert "--teacher $WORK/teacher" in kd and "--dataset $DATA" in kd
    assert "--image_size 96" in kd and "--method kd" in kd
    assert str(tmp) not in json.dumps(record)


def test_loader_flops_and_gpu_estimate_are_measured(dry_run):
    _, _, record = dry_run
    assert record["loader"]["rows"] == 8 and record["loader"]["images_per_s_per_worker"] > 0
    assert (
        "RandomResizedCrop" in record["loader"]["transform"] and "(96, 96)" in record["loader"]["transform"]
    )
    gflops = record["gflops_per_image"]
    assert (
        gflops["teacher_forward"] > gflops["student_forward"] > 0
    )  # resnet10t does more work than the student
    estimate = record["gpu_estimate"]
    assert estimate["loader_bound_images_per_s"] == pytest.approx(
        beyond_cifar.GPU_LOADER_WORKERS * record["loader"]["images_per_s_per_worker"], abs=1
    )
    assert "estimate" in estimate["basis"]


def test_a_rerun_of_one_phase_keeps_the_others(dry_run):
    tmp, argv, record = dry_run
    out = tmp / "again.json"
    out.write_text(json.dumps(record))
    again = beyond_cifar.main([*argv, "--results", str(out), "--phases", "baseline"])
    assert again["phases"]["teacher"] == record["phases"]["teacher"]
    assert again["phases"]["kd"] == record["phases"]["kd"]
    assert again["phases"]["baseline"]["arguments"] == record["phases"]["baseline"]["arguments"]
    # another definition (one more image per class) starts a fresh file
    other = beyond_cifar.main([*argv, "--results", str(out), "--phases", "baseline", "--per_class", "3"])
    assert list(other["phases"]) == ["baseline"]


def test_bad_phase_and_missing_teacher_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        beyond_cifar.main([*TINY, "--phases", "teacher,student", "--results", str(tmp_path / "r.json")])
    assert "--phases 'teacher,student': pick from teacher, baseline, kd" in capsys.readouterr().err
    argv = [*TINY, "--cache_dir", str(tmp_path / "c"), "--work_dir", str(tmp_path / "w"), "--phases", "kd"]
    with pytest.raises(SystemExit, match="2"):
        beyond_cifar.main([*argv, "--results", str(tmp_path / "r.json")])
    assert "No trained teacher in" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


#: what the page's commands must agree with the script on: (argument group, field)
SAME_FIELDS = [
    (0, "teacher"), (0, "student"), (1, "dataset"), (1, "image_size"), (1, "max_eval_samples"), (2, "method"),
    (3, "num_train_epochs"), (3, "per_device_train_batch_size"), (3, "learning_rate"), (3, "weight_decay"),
    (3, "warmup_steps"), (3, "lr_scheduler_type"), (3, "optim"), (3, "seed"), (3, "output_dir"),
]  # fmt: skip


def _fields(parsed):
    return {(g, f): getattr(parsed[g], f) for g, f in SAME_FIELDS}


def _script_phase(phase):
    args = beyond_cifar.Example().arguments(phase, "DATA", REPO.parent / "WORK")
    argv = [a.replace(str(REPO.parent / "WORK"), "WORK") for a in beyond_cifar.argv_of(args)]
    return parse_args(argv, {})


def test_the_pages_commands_train_what_the_script_trains():
    page = beyond_cifar.DOC.read_text()
    teacher = " ".join(re.findall(r'argv \+?= "([^"]*)"', page))
    assert _fields(parse_args(teacher.split(), {})) == _fields(_script_phase("teacher"))
    command = re.search(r"python recipes/distill\.py (.*?)\n```", page, re.S).group(1).replace("\\\n", " ")
    spec = importlib.util.spec_from_file_location("distill_recipe", REPO / "recipes" / "distill.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    parsed = parse_args(shlex.split(command), recipe.DEFAULTS)  # the recipe's own defaults under the flags
    assert parsed[2].baseline and not parsed[3].optim_args
    assert _fields(parsed) == _fields(_script_phase("kd"))


def test_the_pages_table_is_the_results_file():
    page = beyond_cifar.DOC.read_text()
    block = page.split(beyond_cifar.START, 1)[1].split(beyond_cifar.END, 1)[0]
    record = json.loads(beyond_cifar.RESULTS.read_text())
    assert block == beyond_cifar.markdown(record), "run `python benchmarks/beyond_cifar.py --report`"
    assert set(record["phases"]) == set(beyond_cifar.PHASES) and "gpu_estimate" in record
