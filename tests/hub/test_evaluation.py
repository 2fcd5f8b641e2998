"""recipes/evaluate.py and hf_distill.hub.evaluation on local folders: numbers, evaluator parity, bad input."""

from __future__ import annotations

import logging

import datasets
import pytest

from hf_distill.hub import (
    LabelMismatchError,
    ModelNotFoundError,
    classification_pipeline,
    evaluate_classifier,
    image_classification_evaluator,
    load_classifier,
    load_metric,
    read_card,
    resolve_model,
)
from hf_distill.hub.evaluation import metric_path
from tests.conftest import SUBSET
from tests.hub.conftest import NUM_EVAL, error_line, load_recipe


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("evaluate")


def test_shipped_metrics_load_offline_by_path():
    acc, top5 = load_metric("accuracy"), load_metric("top5_accuracy")
    assert acc.compute(predictions=[1, 0, 2, 2], references=[1, 1, 2, 0]) == {"accuracy": 0.5}
    scores = [[0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.5], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]
    assert top5.compute(predictions=scores, references=[6, 0]) == {"top5_accuracy": 0.5}
    assert metric_path("accuracy").endswith("metrics/accuracy")


@pytest.fixture(scope="module")
def recipe_numbers(trained, recipe):
    argv = ["--model", str(trained.folder), "--dataset", str(SUBSET), "--split", "test"]
    return recipe.main(argv + ["--max_samples", str(NUM_EVAL)])


def test_recipe_matches_the_trainers_accuracy(trained, recipe_numbers, capsys):
    hist = trained.trainer.state.log_history
    final = [h for h in hist if "eval_accuracy" in h][-1]
    assert recipe_numbers["accuracy"] == pytest.approx(final["eval_accuracy"], abs=1e-9)
    assert recipe_numbers["top5_accuracy"] == pytest.approx(final["eval_top5_accuracy"], abs=1e-9)


def test_recipe_prints_a_table(trained, recipe, capsys):
    recipe.main(["--model", str(trained.folder), "--dataset", str(SUBSET), "--max_samples", "8"])
    out = capsys.readouterr().out
    assert "| model | dataset | split | samples | top-1 accuracy | top-5 accuracy |" in out
    assert f"| {trained.folder} | cifar10-subset | test[:8] | 8 |" in out


def test_evaluators_number_equals_the_recipes(trained, recipe_numbers):
    pytest.importorskip(
        "scipy", reason="evaluate's evaluators need scipy (pip install 'evaluate[evaluator]')"
    )
    # evaluate's own evaluator, with a transformers pipeline built from the saved folder and the shipped metric
    loaded = load_classifier(str(trained.folder))
    data = trained.test_raw.select(range(NUM_EVAL))
    result = image_classification_evaluator().compute(
        model_or_pipeline=classification_pipeline(loaded),
        data=data,
        metric=load_metric("accuracy"),
        input_column="img",
        label_column="label",
        label_mapping=loaded.model.config.label2id,
    )
    assert result["accuracy"] == pytest.approx(recipe_numbers["accuracy"], abs=1e-9)


def _relabeled(raw, names):
    ds = raw.select(range(16))
    return ds.cast_column("label", datasets.ClassLabel(names=names))


def test_label_mismatch_names_both_label_sets(trained, recipe, capsys, tmp_path):
    other = [f"class_{i}" for i in range(10)]
    loaded = load_classifier(str(trained.folder))
    with pytest.raises(LabelMismatchError) as e:
        evaluate_classifier(
            loaded.model, _relabeled(trained.test_raw, other), loaded.processor, dataset_ref="other"
        )
    msg = str(e.value)
    assert "airplane, automobile, bird" in msg and "class_0, class_1, class_2" in msg
    shuffled = ["automobile", "airplane", *trained.test_raw.features["label"].names[2:]]
    with pytest.raises(LabelMismatchError, match="same classes in another order"):
        evaluate_classifier(loaded.model, _relabeled(trained.test_raw, shuffled), loaded.processor)
    path = tmp_path / "other.parquet"
    _relabeled(trained.test_raw, other).to_parquet(str(path))
    with pytest.raises(SystemExit) as ex:
        recipe.main(["--model", str(trained.folder), "--dataset", str(path), "--split", "train"])
    assert ex.value.code == 2
    line = error_line(capsys)
    assert "do not match the model's id2label" in line and "airplane" in line and "class_0" in line


def test_missing_models_are_clear_errors(recipe, capsys, tmp_path):
    with pytest.raises(ModelNotFoundError, match="there is no such folder"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        resolve_model(str(tmp_path))
    # offline (the test suite's default): a Hub id cannot be fetched, and the message says so
    with pytest.raises(SystemExit):
        recipe.main(["--model", "nobody/no-such-model", "--dataset", str(SUBSET)])
    line = error_line(capsys)
    assert "nobody/no-such-model" in line and "could not be downloaded" in line


def test_update_card_on_a_local_folder(student_copy, recipe, capsys):
    before = read_card(student_copy / "README.md")
    recipe.main(
        ["--model", str(student_copy), "--dataset", str(SUBSET), "--max_samples", "16", "--update-card"]
        + ["--dataset_id", "uoft-cs/cifar10"]
    )
    assert "model card updated" in capsys.readouterr().out
    after = read_card(student_copy / "README.md")
    assert after.text == before.text
    assert after.data.to_dict()["distillation"] == before.data.to_dict()["distillation"]
    new = [r for r in after.data.eval_results if r.dataset_split == "test[:16]"]
    assert {r.metric_type for r in new} == {"accuracy", "top5_accuracy"}
    assert len(after.data.eval_results) == len(before.data.eval_results or []) + 2
    # malformed metadata: a clear error and the file is left as it was
    bad = "---\nlicense: [mit\n---\n# card\n"
    (student_copy / "README.md").write_text(bad)
    with pytest.raises(SystemExit):
        recipe.main(
            ["--model", str(student_copy), "--dataset", str(SUBSET), "--max_samples", "8", "--update-card"]
            + ["--dataset_id", "uoft-cs/cifar10"]
        )
    assert "malformed" in error_line(capsys)
    assert (student_copy / "README.md").read_text() == bad


@pytest.fixture
def log_levels():
    """Put back the log levels the recipe's ``--log_level`` sets (root and hf_distill) after the test."""
    loggers = [logging.getLogger(), logging.getLogger("hf_distill")]
    before = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, before):
        lg.setLevel(level)


def test_recipe_shows_a_progress_bar_that_log_level_error_hides(trained, recipe, capsys, log_levels):
    argv = [
        "--model",
        str(trained.folder),
        "--dataset",
        str(SUBSET),
        "--max_samples",
        "16",
        "--batch_size",
        "4",
    ]
    recipe.main(argv)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert [ln for ln in err.splitlines() if ln.startswith("Evaluating") and "4/4" in ln]
    for quiet in (["--log_level", "error"], ["--disable_tqdm", "true"]):
        recipe.main(argv + quiet)
        out = capsys.readouterr()
        assert "Evaluating" not in out.err and "accuracy" in out.out.lower(), quiet
