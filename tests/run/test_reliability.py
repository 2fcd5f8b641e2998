"""Reliability as a user meets it (issue 16): one line at every stage, guarded output folders, a resume that is the
same run, single-split datasets, undecodable images, untrained teachers. Tiny slices of the embedded data."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import datasets
import pytest
import torch

from hf_distill.data.datasets import (
    DataError,
    ImageClassificationDataset,
    load_train_and_eval,
    prepare_split,
    stratified_holdout,
)
from hf_distill.run.config import parse_args
from hf_distill.run.preflight import (
    LOCK_NAME,
    OutputFolderError,
    acquire_lock,
    at_chance,
    guarded_output_dir,
    warn_if_teacher_at_chance,
)
from hf_distill.run.run_record import RUN_RECORD_NAME, resolve_resume
from tests.conftest import SUBSET
from tests.recipes.test_distill_recipe import _fails, recipe  # noqa: F401  (the recipe module fixture)

TINY = [
    "--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
    "--per_device_eval_batch_size", "64", "--disable_tqdm", "true", "--save_strategy", "no",
]  # fmt: skip
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _write_lock(folder, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "started": "2026-01-01T00:00:00",
        "command": "x",
    }
    (folder / LOCK_NAME).write_text(json.dumps(holder))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- 2: no silent garbage -------------------------------------------------------------------------------------------
def test_architecture_name_as_teacher_is_refused(recipe, capsys, tmp_path):  # noqa: F811
    out = tmp_path / "new" / "run"
    line = _fails(recipe, capsys, TINY + ["--teacher", "cifar_resnet56", "--output_dir", str(out)])
    assert "--teacher cifar_resnet56 is an architecture name" in line and "--allow_untrained_teacher" in line
    assert not (tmp_path / "new").exists()  # the failed run leaves no empty folders


def test_traceback_flag_adds_the_traceback_to_the_one_line(recipe, capsys, tmp_path):  # noqa: F811
    argv = TINY + ["--teacher", "cifar_resnet56", "--traceback", "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        recipe.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback (most recent call last)" in err and "in build_run" in err
    assert err.strip().splitlines()[-1].startswith("error: --teacher cifar_resnet56 is an architecture name")


def test_teacher_at_chance_gets_a_loud_warning(caplog):
    class Stub:
        teacher = object()

        def __init__(self, accuracy):
            self.accuracy = accuracy

        def evaluate_teacher(self, rows):
            assert len(rows) == 100
            return {"accuracy": self.accuracy}

    rows = torch.utils.data.TensorDataset(torch.zeros(100))
    with caplog.at_level(logging.WARNING):
        assert warn_if_teacher_at_chance(Stub(0.11), rows, 10) == 0.11
    assert "!!! The teacher scores 0.1100 on 100 rows, the level of guessing" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_if_teacher_at_chance(Stub(0.85), rows, 10)
    assert caplog.text == ""
    assert at_chance(0.18, 10) and not at_chance(0.2, 10) and at_chance(0.05, 100) and not at_chance(0.2, 100)


@pytest.mark.parametrize("max_steps", ["-1", "0"])
def test_nothing_to_train_is_refused(recipe, capsys, tmp_path, max_steps):  # noqa: F811
    flags = ["--num_train_epochs", "0", "--max_steps", max_steps]  # the last --max_steps wins over TINY's
    line = _fails(recipe, capsys, TINY + flags + ["--output_dir", str(tmp_path / "o")])
    assert line.startswith("error: Nothing to train: --num_train_epochs 0")
    assert not (tmp_path / "o").exists()


# -- 3: one line at every stage ---------------------------------------------------------------------------------------
def test_empty_training_slice_is_one_line(recipe, capsys, tmp_path):  # noqa: F811
    argv = TINY + ["--max_train_samples", "0", "--output_dir", str(tmp_path / "a" / "b")]
    line = _fails(recipe, capsys, argv)
    assert line == "error: The training split is empty after --max_train_samples 0: use at least one row."
    assert os.listdir(tmp_path) == []


def test_output_dir_that_is_a_file(recipe, capsys, tmp_path):  # noqa: F811
    (tmp_path / "f").write_text("x")
    line = _fails(recipe, capsys, TINY + ["--output_dir", str(tmp_path / "f")])
    assert "is a file, not a folder" in line


def _corrupt(n=12, bad=(3,)):
    ds = datasets.load_dataset(str(SUBSET), split="train").select(range(n))
    rows = ds.cast_column("img", datasets.Image(decode=False)).to_list()
    for i in bad:
        rows[i]["img"] = {"bytes": rows[i]["img"]["bytes"][:40], "path": None}  # a truncated JPEG
    feats = ds.cast_column("img", datasets.Image(decode=False)).features
    return datasets.Dataset.from_list(rows, features=feats).cast_column("img", datasets.Image())


def test_undecodable_images_of_a_small_split_are_found_up_front(caplog):
    ds = _corrupt()
    with caplog.at_level(logging.WARNING):
        split = prepare_split(ds, MEAN, STD, 32, train=True)
    assert (
        len(split.dataset) == 11
        and "Skipping 1 undecodable image(s) of the training split (rows 3)" in caplog.text
    )
    with pytest.raises(DataError, match=r"1 image\(s\) of the training split cannot be decoded \(rows 3\)"):
        prepare_split(ds, MEAN, STD, 32, train=True, strict_images=True)


def test_undecodable_images_of_a_large_split_are_replaced_and_counted():
    ds = _corrupt(bad=(3, 4))
    wrapped = ImageClassificationDataset(ds, "img", "label", MEAN, STD, 32, train=False)  # no up-front check
    batch = wrapped.__getitems__([2, 3, 4, 6])
    assert [b["index"] for b in batch] == [2, 5, 5, 6] and wrapped.num_replaced == 2
    assert torch.equal(batch[1]["pixel_values"], wrapped[5]["pixel_values"])
    strict = ImageClassificationDataset(ds, "img", "label", MEAN, STD, 32, train=False, strict_images=True)
    with pytest.raises(DataError, match="The image of row 3 cannot be decoded"):
        strict.__getitems__([2, 3])


def test_strict_images_is_one_line_from_the_recipe(recipe, capsys, tmp_path):  # noqa: F811
    _corrupt(n=40).to_parquet(str(tmp_path / "bad.parquet"))
    argv = TINY + [
        "--dataset",
        str(tmp_path / "bad.parquet"),
        "--strict_images",
        "--eval_split",
        "",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    line = _fails(recipe, capsys, argv)
    assert "cannot be decoded (rows 3)" in line and not (tmp_path / "o").exists()


# -- 4: guarded output folders ----------------------------------------------------------------------------------------
def test_second_run_into_a_locked_folder_names_the_first(recipe, capsys, tmp_path):  # noqa: F811
    _write_lock(tmp_path / "o", os.getpid())  # a live process holds it and has written a checkpoint
    (tmp_path / "o" / "checkpoint-10").mkdir()
    line = _fails(recipe, capsys, TINY + ["--output_dir", str(tmp_path / "o")])
    assert f"is in use by another run (pid {os.getpid()} on {socket.gethostname()}" in line
    assert (tmp_path / "o" / LOCK_NAME).exists()  # the other run's lock is left alone


def test_lock_is_held_for_the_run_and_stale_locks_are_cleared(tmp_path):
    out = tmp_path / "o"
    with guarded_output_dir(str(out)):
        held = json.loads((out / LOCK_NAME).read_text())
        assert held["pid"] == os.getpid()
        with pytest.raises(OutputFolderError, match=f"pid {os.getpid()}"):
            acquire_lock(str(out))
    assert not (out / LOCK_NAME).exists()
    _write_lock(tmp_path / "stale", _dead_pid())
    acquire_lock(str(tmp_path / "stale"))  # the killed run's lock is replaced by ours
    assert json.loads((tmp_path / "stale" / LOCK_NAME).read_text())["pid"] == os.getpid()
    _write_lock(tmp_path / "remote", _dead_pid(), host="another-host")  # cannot be checked from here: kept
    with pytest.raises(OutputFolderError, match="another-host"):
        acquire_lock(str(tmp_path / "remote"))


def test_failed_run_removes_only_the_folders_it_created(tmp_path):
    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError), guarded_output_dir(str(tmp_path / "keep" / "a" / "b")):
        os.makedirs(tmp_path / "keep" / "a" / "b" / "checkpoint-1" / "empty")
        raise RuntimeError("a bug")
    assert os.listdir(tmp_path) == ["keep"] and os.listdir(tmp_path / "keep") == []


def test_non_empty_output_folder_needs_overwrite_or_resume(recipe, capsys, tmp_path):  # noqa: F811
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "model.safetensors").write_text("x")
    line = _fails(recipe, capsys, TINY + ["--output_dir", str(tmp_path / "o")])
    assert "already holds files (model.safetensors)" in line and "--overwrite_output_dir" in line


# -- 5: resume that is the same run -----------------------------------------------------------------------------------
RESUMABLE = [a for a in TINY if a not in ("--save_strategy", "no")] + [
    "--save_strategy",
    "steps",
    "--save_steps",
    "1",
]


@pytest.fixture(scope="module")
def finished_run(recipe, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("run") / "o"
    recipe.main(RESUMABLE + ["--output_dir", str(out)])
    return out


def test_bare_and_true_resume_flags_mean_the_latest_checkpoint(tmp_path):
    assert parse_args(["--resume_from_checkpoint"])[3].resume_from_checkpoint == "true"
    assert parse_args(["--resume_from_checkpoint", "--seed", "3"])[3].resume_from_checkpoint == "true"
    for n in (2, 10, 12):
        (tmp_path / f"checkpoint-{n}").mkdir()
        if n != 12:  # checkpoint-12's save was interrupted: trainer_state.json, written last, is missing
            (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    assert resolve_resume("true", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_resume("True", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(str(tmp_path / "checkpoint-2"), str(tmp_path)) == str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match="has no checkpoint-N folder"):
        resolve_resume("true", str(tmp_path / "none"))


def test_checkpoints_record_the_run(finished_run):
    record = json.loads((finished_run / "checkpoint-1" / RUN_RECORD_NAME).read_text())
    assert record["signature"]["objective"]["methods"]["kd"]["temperature"] == 4.0
    assert record["signature"]["max_steps"] == 2 and record["signature"]["student"] == "cifar_resnet20"
    (segment,) = record["segments"]
    assert segment["from_step"] == 0 and segment["to_step"] == 1 and segment["loss_sum"] > 0


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--method", "dkd"], "method: 'kd' -> 'dkd'"),
        (["--max_steps", "3"], "max_steps: 2 -> 3"),
        (["--kd-temperature", "2"], "objective.methods.kd.temperature: 4.0 -> 2.0"),
        (["--student", "cifar_resnet8"], "student: 'cifar_resnet20' -> 'cifar_resnet8'"),
        (["--per_device_train_batch_size", "32"], "global_train_batch_size: 64 -> 32"),
        (["--label_smoothing_factor", "0.1"], "label_smoothing_factor"),  # the cross-entropy honours it
    ],
)
def test_resume_with_other_defining_arguments_is_refused(recipe, capsys, finished_run, flags, expected):  # noqa: F811
    argv = RESUMABLE + ["--output_dir", str(finished_run), "--resume_from_checkpoint", "true"]
    line = _fails(recipe, capsys, argv + flags)
    assert "checkpoint-2 was written by another run (" in line and expected in line
    assert "--resume_ignore_changes" in line


def test_error_inside_training_is_one_line(recipe, capsys, finished_run):  # noqa: F811
    # --resume_ignore_changes lets the run reach the checkpoint loading inside Trainer.train, which refuses it.
    argv = RESUMABLE + ["--output_dir", str(finished_run), "--resume_from_checkpoint", "true"]
    line = _fails(recipe, capsys, argv + ["--student", "cifar_resnet8", "--resume_ignore_changes"])
    assert "holds another student architecture" in line


def test_resumed_run_reports_the_whole_run(recipe, finished_run, tmp_path):  # noqa: F811
    whole = json.loads((finished_run / "all_results.json").read_text())
    out = tmp_path / "o"
    shutil.copytree(finished_run, out)
    shutil.rmtree(out / "checkpoint-2")
    res = recipe.main(
        RESUMABLE + ["--output_dir", str(out), "--resume_from_checkpoint"]
    )  # bare: checkpoint-1
    assert res["train_segments"] == 2
    # exact resume: step 2 repeats step 2, so the mean over both segments is the uninterrupted run's
    assert res["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)
    first = json.loads((out / "checkpoint-1" / RUN_RECORD_NAME).read_text())["segments"][0]["minutes"]
    assert res["train_minutes"] >= round(first, 2)
    final = json.loads((out / "checkpoint-2" / RUN_RECORD_NAME).read_text())["segments"]
    assert [(s["from_step"], s["to_step"]) for s in final] == [(0, 1), (1, 2)]


# -- 6: datasets with a single split ----------------------------------------------------------------------------------
def test_stratified_holdout_is_seeded_and_per_class():
    labels = [i % 4 for i in range(40)] + [4]  # class 4 has a single row: it stays in training
    kept, held = stratified_holdout(labels, 0.2, seed=1)
    assert sorted(kept + held) == list(range(41)) and 40 in kept
    assert [sum(labels[i] == c for i in held) for c in range(5)] == [2, 2, 2, 2, 0]
    assert stratified_holdout(labels, 0.2, seed=1) == (kept, held)
    assert stratified_holdout(labels, 0.2, seed=2)[1] != held


def test_single_parquet_file_gets_a_validation_split(tmp_path):
    path = tmp_path / "one.parquet"
    datasets.load_dataset(str(SUBSET), split="train").select(range(100)).to_parquet(str(path))
    train, val, carved = load_train_and_eval(str(path), "train", "test", None, 0.1, seed=0)
    assert len(train) == 90 and len(val) == 10 and carved.as_dict()["num_rows"] == 10
    assert sorted(val["label"]) == sorted(set(val["label"]))  # one row of each of the 10 classes


def _class_folders(root, per_class=8):
    ds = datasets.load_dataset(str(SUBSET), split="train")
    names = ds.features["label"].names
    for i, row in enumerate(ds.select(range(10 * per_class))):
        folder = root / names[row["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        row["img"].save(folder / f"{i}.png")
    return root


def test_folder_of_class_folders_trains_and_evaluates(recipe, tmp_path):  # noqa: F811
    data = _class_folders(tmp_path / "data")
    res = recipe.main(TINY + ["--dataset", str(data), "--output_dir", str(tmp_path / "o")])
    assert res["validation_split"] == {"carved_from": "train", "size": 0.1, "seed": 0, "num_rows": 10}
    assert 0.0 <= res["eval_accuracy"] <= 1.0 and res["eval_teacher_accuracy"] > 0.5
    saved = json.loads((tmp_path / "o" / "all_results.json").read_text())
    assert saved["validation_split"]["num_rows"] == 10


def test_no_evaluation_split_trains_without_evaluating(recipe, tmp_path):  # noqa: F811
    path = tmp_path / "one.parquet"
    datasets.load_dataset(str(SUBSET), split="train").select(range(64)).to_parquet(str(path))
    argv = TINY + ["--dataset", str(path), "--eval_split", "", "--eval_strategy", "epoch"]
    res = recipe.main(argv + ["--output_dir", str(tmp_path / "o")])
    assert "eval_accuracy" not in res and res["train_segments"] == 1
