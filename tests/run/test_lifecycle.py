"""The run's lifecycle (hf_distill.run.lifecycle.distill, what recipes/distill.py calls): resuming never overwrites another run,
a finished run resumed is the same run, an interrupted save is recognised, a diverged run is not saved, and Ctrl-C,
damaged checkpoint files and impossible output paths each end in one line."""

import json
import os
import shutil

import pytest
import safetensors.torch
import torch

from hf_distill.training.checkpoints import saved_model_problem
from tests.helpers import load_recipe
from tests.helpers import recipe_error_line as _fails

#: the probes' short run: 24 steps of 16 rows from 256 (16 steps an epoch), a checkpoint every 8 steps
TR = [
    "--max_train_samples", "256", "--max_eval_samples", "64", "--max_steps", "24",
    "--per_device_train_batch_size", "16", "--save_strategy", "steps", "--save_steps", "8",
    "--eval_strategy", "no", "--disable_tqdm", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("distill_recipe_run")


@pytest.fixture(scope="module")
def finished_run(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    recipe.main(TR + ["--output_dir", str(out)])
    return out


def _weights(folder) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_a_run_writes_the_transformers_example_files(finished_run):
    for name in ("all_results.json", "train_results.json", "trainer_state.json", "config.json"):
        assert (finished_run / name).is_file(), name
    results = json.loads((finished_run / "all_results.json").read_text())
    assert results["objective"]["methods"]["kd"]["temperature"] == 4.0 and results["train_segments"] == 1
    assert json.loads((finished_run / "trainer_state.json").read_text())["global_step"] == 24
    assert saved_model_problem(str(finished_run)) is None
    card = (finished_run / "README.md").read_text()
    assert (
        "Preprocessing in training:" in card and "random crop" in card.lower()
    )  # what the data went through


@pytest.mark.slow
def test_resuming_a_finished_run_reproduces_its_final_model(recipe, finished_run, tmp_path):
    """The natural recovery after a kill during the final save: the last checkpoint of a run that ended mid-epoch
    (24 steps, 16 an epoch) resumed in a new folder gives the run's final model, and trains no step more."""
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copytree(finished_run / "checkpoint-24", copy / "checkpoint-24")
    recipe.main(TR + ["--output_dir", str(copy), "--resume_from_checkpoint", "true"])
    assert sorted(p.name for p in copy.glob("checkpoint-*")) == ["checkpoint-24"]  # no checkpoint-25
    want, got = _weights(finished_run), _weights(copy)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.slow
def test_resuming_another_folders_checkpoint_into_a_finished_run_is_refused(
    recipe, capsys, finished_run, tmp_path
):
    other = tmp_path / "other"
    shutil.copytree(finished_run, other)
    before = _weights(other)
    line = _fails(
        recipe,
        capsys,
        TR + ["--output_dir", str(other), "--resume_from_checkpoint", str(finished_run / "checkpoint-16")],
    )
    assert "belongs to another folder" in line and "--overwrite_output_dir" in line
    after = _weights(other)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing replaced
    assert sorted(p.name for p in other.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-24"]


def test_an_interrupted_export_is_recognised(tmp_path):
    from hf_distill.hub.classifier import IncompleteFolderError, check_saved_model

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    (folder / "config.json").write_text(
        ""
    )  # what kill -9 during the final save could leave before this version
    assert "config.json is empty" in saved_model_problem(str(folder))
    os.remove(folder / "config.json")  # what this version's export leaves (the config is written last)
    assert "config.json is missing" in saved_model_problem(str(folder))
    with pytest.raises(IncompleteFolderError, match="incomplete model folder: its config.json is missing"):
        check_saved_model(folder)  # what evaluate.py and push.py run first
    (folder / "config.json").write_text("{}")
    assert saved_model_problem(str(folder)) is None


@pytest.mark.slow
def test_a_short_run_that_diverges_is_not_saved(recipe, capsys, tmp_path):
    out = tmp_path / "o"
    line = _fails(
        recipe,
        capsys,
        ["--learning_rate", "1e6", "--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "64",
         "--per_device_train_batch_size", "16", "--disable_tqdm", "true", "--output_dir", str(out),
         "--save_strategy", "no"],
    )  # fmt: skip
    assert "diverged" in line or "not finite" in line or "non-finite" in line.lower(), line
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()


def test_an_output_dir_under_a_file_is_one_line(recipe, capsys, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    line = _fails(recipe, capsys, ["--output_dir", str(tmp_path / "file.txt" / "run")])
    assert "lies under the file" in line and "file.txt" in line


@pytest.mark.slow
def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(recipe, capsys, tmp_path, monkeypatch):
    from hf_distill.training.trainer import DistillationTrainer

    real = DistillationTrainer.training_step
    calls = {"n": 0}

    def interrupted_at_step_11(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "training_step", interrupted_at_step_11)
    out = tmp_path / "o"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        recipe.main(TR + ["--output_dir", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 130 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("interrupted: ")]
    assert (
        len(line) == 1
        and "step 10" in line[0]
        and "checkpoint-8" in line[0]
        and "--resume_from_checkpoint" in line[0]
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt"])
def test_a_crafted_file_in_a_checkpoint_is_one_line(recipe, capsys, finished_run, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(finished_run / "checkpoint-16", run / "checkpoint-16")
    # a pickle that would run code if loaded unsafely, then plain garbage: both refused, in one line
    (run / "checkpoint-16" / name).write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    line = _fails(recipe, capsys, TR + ["--output_dir", str(run), "--resume_from_checkpoint", "true"])
    assert "checkpoint-16" in line and "cannot be read safely" in line


def test_report_to_a_logger_that_is_not_installed_is_one_line(recipe, capsys, tmp_path, monkeypatch):
    from hf_distill.hub import reporting

    monkeypatch.setattr(
        reporting, "_available", lambda test_name: lambda: False
    )  # as where it is not installed
    line = _fails(recipe, capsys, ["--report_to", "tensorboard", "--output_dir", str(tmp_path / "o")])
    assert "pip install tensorboard" in line and not (tmp_path / "o").exists()
