"""recipes/distill.py --baseline: the student trained alone next to the distilled one, on a tiny slice."""

import json

import pytest

from hf_distill.run import baseline as baseline_module
from hf_distill.run.baseline import BASELINE_RESULTS, build_baseline, comparison_line
from hf_distill.run.config import parse_args
from tests.recipes import test_distill_recipe as test_recipe
from tests.recipes.test_distill_recipe import TINY

recipe = test_recipe.recipe  # the recipe module, as a fixture


def test_baseline_run_card_and_summary(recipe, tmp_path, capsys):
    plain = recipe.main(TINY + ["--output_dir", str(tmp_path / "plain")])
    out = tmp_path / "with"
    res = recipe.main(TINY + ["--baseline", "true", "--output_dir", str(out)])
    # Training the baseline first leaves the distillation run exactly as without --baseline.
    assert res["eval_accuracy"] == plain["eval_accuracy"]
    base = json.loads((out / "baseline" / "distillation_summary.json").read_text())
    assert res["baseline_accuracy"] == base["accuracy"]
    assert base["methods"] == []  # cross-entropy only
    assert base["teacher_accuracy"] is None and base["teacher"] is None  # the teacher never ran
    summary = json.loads((out / "distillation_summary.json").read_text())
    assert summary["baseline_accuracy"] == res["baseline_accuracy"]
    assert summary["baseline_top5_accuracy"] == res["baseline_top5_accuracy"]
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["baseline_accuracy"] == res["baseline_accuracy"]
    card = (out / "README.md").read_text()
    gain = 100 * (res["eval_accuracy"] - res["baseline_accuracy"])
    assert "same student trained without distillation (baseline)" in card
    assert "baseline_accuracy" in card.split("---")[1]  # its own model-index entry
    assert f"{gain:+.2f}" in card or f"{gain:+.1f}" in card
    printed = capsys.readouterr().out
    assert f"gain {gain:+.2f} points" in printed


def test_a_resumed_run_reuses_its_baseline_and_refuses_another(recipe, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = TINY + ["--baseline", "true", "--output_dir", str(out), "--save_strategy", "epoch"]
    first = recipe.main(argv)
    assert (out / "baseline" / BASELINE_RESULTS).is_file()

    def trained_again(run):
        raise AssertionError("the baseline was trained again")

    monkeypatch.setattr(baseline_module, "run_baseline", trained_again)
    again = recipe.main(argv + ["--resume_from_checkpoint", "true"])
    assert again["baseline_accuracy"] == first["baseline_accuracy"]
    assert again["eval_accuracy"] == first["eval_accuracy"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # the baseline in the folder is not this run's
        recipe.main(argv + ["--resume_from_checkpoint", "true", "--learning_rate", "0.01"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "holds a baseline trained with other arguments" in err[0]
        and "learning_rate" in err[0]
    )


def test_baseline_never_loads_the_teacher(recipe, tmp_path):
    argv = TINY + ["--output_dir", str(tmp_path), "--teacher", str(tmp_path / "no-such-teacher")]
    args = parse_args(argv, recipe.DEFAULTS)
    run = build_baseline(*args[:4])
    assert run.trainer.teacher is None and run.trainer.args.output_dir == str(tmp_path / "baseline")
    assert not run.trainer.model.objective.methods


def test_comparison_line():
    assert comparison_line(0.9, 0.6, 0.615) == (
        "teacher 90.00%   baseline (no distillation) 60.00%   student 61.50%   gain +1.50 points"
    )
    assert comparison_line(None, None, 0.5).endswith("gain n/a")
