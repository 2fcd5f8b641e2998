"""The student's model card: metadata, body, plot, runnable usage snippet, and safe updates of existing cards."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard

from hf_distill.hub import (
    CARD_MARKER,
    SUMMARY_NAME,
    CardError,
    DistillationSummary,
    build_card,
    collect_summary,
    model_reference,
    read_card,
    summary_from_folder,
    update_card_file,
)
from hf_distill.hub.publish import write_card


def _meta(folder) -> dict:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


def test_card_metadata(trained):
    meta = _meta(trained.folder)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-classification"
    assert "base_model" not in meta  # a zoo student built from scratch has no initialization checkpoint
    # trained on a local folder: no Hub dataset id to name, so no `datasets:` and no model-index entry of its own
    assert "datasets" not in meta and "model-index" not in meta
    assert meta["license"] == "apache-2.0"
    assert {"knowledge-distillation", "hf_distill", "kd", "image-classification"} <= set(meta["tags"])
    d = meta["distillation"]
    assert d["teacher"] == "cifar10-resnet56"
    assert d["methods"] == ["kd"] and d["weights"] == {"kd": 0.9} and d["ce_weight"] == 0.1
    assert d["hyperparameters"] == {"kd": {"temperature": 4.0, "logit_standardize": False}}
    hist = trained.trainer.state.log_history
    student_acc = [h["eval_accuracy"] for h in hist if "eval_accuracy" in h][-1]
    teacher_acc = [h["eval_teacher_accuracy"] for h in hist if "eval_teacher_accuracy" in h][-1]
    assert d["student_accuracy"] == pytest.approx(student_acc) and d["teacher_accuracy"] == pytest.approx(
        teacher_acc
    )
    # the local data is described in prose: its name, rows and fingerprint
    summary = DistillationSummary.load(trained.folder)
    text = (trained.folder / "README.md").read_text()
    assert summary.local_dataset == "cifar10-subset" and summary.dataset is None
    assert f"`cifar10-subset` ({summary.num_train_samples} training images, fingerprint `" in text
    assert summary.dataset_fingerprint and summary.dataset_fingerprint in text


def test_model_index_holds_the_students_results_once_under_a_hub_id(trained):
    summary = dataclasses.replace(
        DistillationSummary.load(trained.folder), dataset="uoft-cs/cifar10", baseline_accuracy=0.01
    )
    card = build_card(summary)
    meta = card.data.to_dict()
    assert meta["datasets"] == ["uoft-cs/cifar10"]
    (entry,) = meta["model-index"]
    (res,) = entry["results"]  # one (task, dataset, config, split)
    assert res["dataset"] == {"name": "uoft-cs/cifar10", "type": "uoft-cs/cifar10", "split": "test[:64]"}
    metrics = {m["type"]: m["value"] for m in res["metrics"]}
    # the teacher's and the baseline's accuracies are other models' results: table and distillation block only
    assert set(metrics) == {"accuracy", "top5_accuracy"}
    assert metrics["accuracy"] == pytest.approx(summary.accuracy, abs=1e-6)
    assert meta["distillation"]["teacher_accuracy"] == pytest.approx(summary.teacher_accuracy)
    assert "(teacher)" in card.text and "(baseline)" in card.text
    # the card round-trips through huggingface_hub
    assert ModelCard(str(card)).data.eval_results[0].metric_type == "accuracy"


def test_card_body_documents_the_run(trained):
    text = (trained.folder / "README.md").read_text()
    assert CARD_MARKER in text
    for needle in (
        "cifar10-resnet56",  # the teacher
        "| `kd` | 0.9 | temperature=4, logit_standardize=False |",  # method, weight, hyperparameters
        "0.1 * cross_entropy + 0.9 * kd",
        "Hinton et al., Distilling the Knowledge in a Neural Network",  # paper
        "@article{hinton2015distilling",  # citation
        "**Training time:**",
        "**Hardware:** CPU",
        "1 process; precision fp32",
        "![Training loss and its terms per step, and evaluation accuracy per epoch](training_curves.png)",
        "| learning_rate | 0.05 |",
        "airplane, automobile",
    ):
        assert needle in text, needle
    png = (trained.folder / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_usage_snippet_runs_against_the_folder(trained, capsys):
    text = (trained.folder / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    first, rest = code.split("\n", 1)
    assert first.startswith("model_id = ")
    exec(compile(f"model_id = {str(trained.folder)!r}\n{rest}", "card_snippet", "exec"), {})
    out = capsys.readouterr().out.strip().splitlines()
    names = set(trained.trainer.model.student.config.id2label.values())
    assert len(out) == 5 and all(line.split(":")[0] in names for line in out)


def test_summary_round_trip_and_overrides(trained, tmp_path):
    s = collect_summary(trained.trainer, dataset="uoft-cs/cifar10", baseline_accuracy=0.01, license="mit")
    assert s.dataset == "uoft-cs/cifar10" and s.license == "mit"
    assert s.gain == pytest.approx(s.accuracy - 0.01)
    s.save(tmp_path)
    back = DistillationSummary.load(tmp_path)
    assert dataclasses.asdict(back) == dataclasses.asdict(DistillationSummary.from_dict(s.to_dict()))
    card = build_card(back, base_model="org/resnet8-init", plot_file=None)
    assert card.data.base_model == "org/resnet8-init"
    assert card.data.to_dict()["distillation"]["gain"] == pytest.approx(round(s.gain, 6))
    assert {r.metric_type for r in card.data.eval_results} == {"accuracy", "top5_accuracy"}
    assert "Gain over the no-distillation baseline" in card.text
    with pytest.raises(TypeError, match="Unknown DistillationSummary fields"):
        build_card(back, teacher_repo="x")


def test_base_model_is_the_initialization_never_the_teacher(trained):
    assert model_reference("microsoft/resnet-18") == "microsoft/resnet-18"
    assert model_reference("hf-hub:timm/resnet18.a1_in1k") == "timm/resnet18.a1_in1k"
    assert (
        model_reference("/cache/hub/models--timm--resnet18.a1_in1k/snapshots/abc123")
        == "timm/resnet18.a1_in1k"
    )
    assert model_reference(str(trained.folder)) == trained.folder.name
    assert model_reference("") is None
    student = trained.trainer.model.student
    old = student.config._name_or_path
    student.config._name_or_path = "org/resnet8-pretrained"
    try:
        s = collect_summary(trained.trainer)
    finally:
        student.config._name_or_path = old
    assert s.base_model == "org/resnet8-pretrained" and s.teacher == "cifar10-resnet56"
    assert build_card(s).data.base_model == "org/resnet8-pretrained"


def test_a_local_initialization_is_named_in_the_body_not_as_base_model(trained):
    student = trained.trainer.model.student
    old = student.config._name_or_path
    student.config._name_or_path = str(trained.folder)  # a local folder: not a Hub id
    try:
        s = collect_summary(trained.trainer)
    finally:
        student.config._name_or_path = old
    assert s.base_model is None and s.init_checkpoint == trained.folder.name
    card = build_card(s)
    assert card.data.base_model is None
    assert f"initialized from the local checkpoint `{trained.folder.name}`" in card.text


def _result(value: float, split: str = "test") -> EvalResult:
    return EvalResult(
        task_type="image-classification",
        dataset_type="cifar10-subset",
        dataset_name="cifar10-subset",
        dataset_split=split,
        metric_type="accuracy",
        metric_name="Top-1 accuracy",
        metric_value=value,
    )


USER_CARD = """---
license: mit
custom_key:
  keep: [1, 2]
model-index:
- name: my-model
  results:
  - task: {type: image-classification}
    dataset: {type: other-set, name: Other set, split: validation}
    metrics:
    - {type: f1, value: 0.5}
---

# My model

Hand-written notes that must survive.
"""


def test_update_keeps_every_other_part_of_an_existing_card(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(USER_CARD)
    update_card_file(path, [_result(0.42)])
    card = read_card(path)
    assert card.data.license == "mit" and card.data.to_dict()["custom_key"] == {"keep": [1, 2]}
    assert "Hand-written notes that must survive." in card.text
    got = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got == {("other-set", "f1"): 0.5, ("cifar10-subset", "accuracy"): 0.42}
    update_card_file(path, [_result(0.43)])  # same metric and split: replaced, not duplicated
    results = read_card(path).data.eval_results
    assert len(results) == 2 and {r.metric_value for r in results} == {0.5, 0.43}
    assert read_card(path).data.model_name == "my-model"


def test_malformed_card_is_a_clear_error_and_untouched(tmp_path):
    path = tmp_path / "README.md"
    bad = "---\nlicense: mit\ntags: [a, b\n---\n# body\n"
    path.write_text(bad)
    with pytest.raises(
        CardError, match=r"YAML metadata of .*README.md is malformed.*line \d+.*left untouched"
    ):
        update_card_file(path, [_result(0.5)])
    assert path.read_text() == bad
    with pytest.raises(CardError):
        write_card(tmp_path, DistillationSummary(model_name="x"))
    assert path.read_text() == bad


def test_regenerated_card_keeps_added_results_and_a_users_card_keeps_its_text(trained, student_copy):
    summary = dataclasses.replace(DistillationSummary.load(student_copy), dataset="uoft-cs/cifar10")
    readme = student_copy / "README.md"
    update_card_file(readme, [_result(0.77, split="validation")], metadata={"extra": "kept"})
    write_card(student_copy, summary, plot_file="training_curves.png")  # ours: regenerated
    card = read_card(readme)
    assert CARD_MARKER in card.text and card.data.to_dict()["extra"] == "kept"
    assert any(r.dataset_split == "validation" and r.metric_value == 0.77 for r in card.data.eval_results)
    assert any(r.metric_type == "accuracy" and r.dataset_split == "test[:64]" for r in card.data.eval_results)
    readme.write_text(USER_CARD)  # not ours: its text and metadata stay, ours is added
    write_card(student_copy, summary)
    card = read_card(readme)
    assert "Hand-written notes that must survive." in card.text and CARD_MARKER not in card.text
    assert card.data.license == "mit" and card.data.to_dict()["distillation"]["teacher"] == "cifar10-resnet56"
    assert {r.metric_type for r in card.data.eval_results} == {"f1", "accuracy", "top5_accuracy"}


def test_a_regenerated_card_drops_what_earlier_versions_filed_wrongly(trained, student_copy, tmp_path):
    """Cards of earlier versions held the teacher's accuracy among the student's results and entries under the
    folder name and the absolute path; evaluating the same split again gives one entry, the student's."""
    summary = dataclasses.replace(DistillationSummary.load(student_copy), dataset="uoft-cs/cifar10")
    readme = student_copy / "README.md"
    old = [
        _result(0.1, split="test[:64]"),
        dataclasses.replace(_result(0.9, split="test[:64]"), metric_type="teacher_accuracy"),
        dataclasses.replace(
            _result(0.1, split="test[:64]"), dataset_type=str(tmp_path), dataset_name=str(tmp_path)
        ),
        dataclasses.replace(_result(0.2, split="test[:64]"), dataset_type="uoft-cs/cifar10"),
    ]
    update_card_file(readme, old)
    write_card(student_copy, summary)
    meta = _meta(student_copy)
    entries = [r for e in meta["model-index"] for r in e["results"]]
    keys = [(r["dataset"]["type"], r["dataset"]["split"]) for r in entries]
    assert ("uoft-cs/cifar10", "test[:64]") in keys and len(keys) == len(set(keys))
    assert str(tmp_path) not in readme.read_text()
    ours = next(r for r in entries if r["dataset"]["type"] == "uoft-cs/cifar10")
    assert {m["type"]: m["value"] for m in ours["metrics"]} == {
        "accuracy": pytest.approx(summary.accuracy, abs=1e-6),
        "top5_accuracy": pytest.approx(summary.top5_accuracy, abs=1e-6),
    }
    assert all(m["type"] != "teacher_accuracy" for r in entries for m in r["metrics"])


def test_card_of_a_plain_run_without_results():
    card = build_card(DistillationSummary(model_name="bare", label_names=["a", "b"]))
    meta = card.data.to_dict()
    assert "model-index" not in meta and "base_model" not in meta
    assert meta["distillation"]["methods"] == ["none"] and "knowledge-distillation" not in meta["tags"]
    assert "cross-entropy only (no distillation)" in card.text and "None" not in card.text


def test_a_folder_rebuilds_the_summary_the_trainer_collected(trained, student_copy):
    """One builder serves both sources: what a run's files say gives the summary the live trainer gave."""
    trainer = trained.trainer
    collected = collect_summary(trainer)
    (student_copy / SUMMARY_NAME).unlink()
    trainer.state.save_to_json(str(student_copy / "trainer_state.json"))
    objective = trainer.accelerator.unwrap_model(trainer.model).objective.describe()
    results = {"objective": objective, "eval_teacher_accuracy": collected.teacher_accuracy}
    (student_copy / "distill_results.json").write_text(json.dumps(results))
    rebuilt = summary_from_folder(student_copy)
    same = [
        "student_class", "student_architecture", "library_name", "remote_code", "ce_weight", "methods",
        "label_names", "image_size", "image_mean", "image_std", "accuracy", "top5_accuracy",
        "teacher_accuracy", "precision", "global_step", "epochs", "tags",
    ]  # fmt: skip
    assert {k: getattr(rebuilt, k) for k in same} == {k: getattr(collected, k) for k in same}
    assert rebuilt.methods[0].paper and rebuilt.label_names[0] == "airplane"
    # the folder does not know how many processes trained it: no total batch size, everything else equal
    assert rebuilt.training == {k: v for k, v in collected.training.items() if k != "total_train_batch_size"}
