"""publish -> download -> load -> evaluate -> card update, against the Hub test double (tests/hub/hub_server.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
from huggingface_hub import HfApi, snapshot_download
from transformers import AutoModelForImageClassification

from hf_distill.hub import (
    CardError,
    ModelNotFoundError,
    evaluate_model,
    push_folder,
    read_card,
    update_model_card,
)
from hf_distill.hub.evaluation import EvaluationResult
from tests.conftest import REPO, SUBSET
from tests.hub.conftest import ZOO_REPO_FILES, load_recipe, model_files, subprocess_env


def _readme(hub, repo_id) -> str:
    return hub.file(repo_id, "README.md").decode()


def test_publish_download_load_evaluate_update(trained, student_copy, hub, tmp_path):
    repo_id = "tester/cifar10-resnet8-kd"
    (student_copy / "checkpoint-1").mkdir()  # never uploaded
    (student_copy / "checkpoint-1" / "optimizer.pt").write_bytes(b"x")
    push = load_recipe("push")
    out = push.main([str(student_copy), "--hub_model_id", repo_id, "--dataset", "uoft-cs/cifar10"])
    assert out["commit_url"].startswith(hub.url)
    assert hub.calls("POST", r"^/api/repos/create$") >= 1
    assert hub.calls("POST", rf"^/api/models/{repo_id}/preupload/main$") >= 1
    assert hub.calls("POST", rf"^/api/models/{repo_id}/commit/main$") >= 1
    files = set(hub.repo(repo_id).resolve("main").files)
    assert ZOO_REPO_FILES <= files
    assert {"training_curves.png", "distillation_summary.json"} <= files
    assert not any(f.startswith("checkpoint-") for f in files)

    # download: the snapshot is byte-identical to the folder and loads like it
    snap = snapshot_download(repo_id, cache_dir=str(tmp_path / "cache"))
    for f in files - {".gitattributes"}:
        assert (student_copy / f).read_bytes() == open(os.path.join(snap, f), "rb").read(), f
    model = AutoModelForImageClassification.from_pretrained(snap).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, trained.trainer.model.student.eval()(x).logits, atol=1e-6)

    # evaluate the Hub model and merge the result into the Hub card (huggingface_hub.metadata_update)
    card_before = read_card(student_copy / "README.md")
    result = evaluate_model(
        repo_id, str(SUBSET), split="test", max_samples=16, update_card=True, dataset_id="uoft-cs/cifar10"
    )
    assert 0.0 <= result.accuracy <= 1.0 and result.num_samples == 16
    text = _readme(hub, repo_id)
    (tmp_path / "hub.md").write_text(text)
    card = read_card(tmp_path / "hub.md")
    assert card.text == card_before.text  # body untouched
    assert card.data.to_dict()["distillation"] == card_before.data.to_dict()["distillation"]
    assert card.data.base_model == card_before.data.base_model and card.data.tags == card_before.data.tags
    new = {r.metric_type: r.metric_value for r in card.data.eval_results if r.dataset_split == "test[:16]"}
    assert new == {
        "accuracy": pytest.approx(result.accuracy),
        "top5_accuracy": pytest.approx(result.top5_accuracy),
    }
    n = len(card.data.eval_results)
    assert n == len(card_before.data.eval_results) + 2
    # a second update of the same metrics replaces them
    update_model_card(
        repo_id, EvaluationResult(repo_id, "uoft-cs/cifar10", "test", 16, 0.5, 0.75, max_samples=16)
    )
    (tmp_path / "hub2.md").write_text(_readme(hub, repo_id))
    again = read_card(tmp_path / "hub2.md").data.eval_results
    assert len(again) == n and any(r.dataset_split == "test[:16]" and r.metric_value == 0.5 for r in again)


def test_trainer_push_to_hub(trained, hub, tmp_path):
    t = trained.trainer
    saved = (t.args.output_dir, t.args.hub_model_id, t.hub_model_id)
    t.args.output_dir, t.args.hub_model_id, t.hub_model_id = (
        str(tmp_path / "out"),
        "tester/pushed-by-trainer",
        None,
    )
    try:
        t.push_to_hub(dataset="cifar10-subset")
    finally:
        t.args.output_dir, t.args.hub_model_id, t.hub_model_id = saved
    files = set(hub.repo("tester/pushed-by-trainer").resolve("main").files)
    assert ZOO_REPO_FILES <= files
    text = _readme(hub, "tester/pushed-by-trainer")
    assert "teacher: cifar10-resnet56" in text and 'model_id = "tester/pushed-by-trainer"' in text


def test_timm_student_loads_from_the_hub_with_timm(timm_folder, hub, capsys):
    student, folder = timm_folder
    push_folder(folder, "tester/timm-student")
    x = torch.randn(2, 3, 32, 32)
    model = timm.create_model("hf-hub:tester/timm-student", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(model(x), student.eval()(x).logits, atol=1e-6)
    assert model.pretrained_cfg["label_names"][0] == "airplane" and model.pretrained_cfg["crop_pct"] == 1.0
    # the card's timm snippet runs as written against the Hub
    blocks = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S)
    timm_code = next(b for b in blocks if "timm.create_model" in b)
    exec(
        compile('model_id = "tester/timm-student"\n' + timm_code.split("\n", 1)[1], "timm_snippet", "exec"),
        {},
    )
    label = capsys.readouterr().out.split()[0]
    assert label in model.pretrained_cfg["label_names"]


def test_hub_errors_are_clear(hub, trained):
    with pytest.raises(
        ModelNotFoundError, match="'tester/does-not-exist' does not exist.*has no model repository"
    ):
        evaluate_model("tester/does-not-exist", str(SUBSET))
    # a Hub card with malformed YAML: a clear error, nothing committed
    repo = hub.create("tester/bad-card")
    files = dict(repo.resolve("main").files)
    files.update(
        model_files(trained.folder, ("config.json", "model.safetensors", "preprocessor_config.json"))
    )
    files["README.md"] = b"---\nlicense: mit\ntags: [a\n---\n# keep me\n"
    hub._commit(repo, "upload", files)
    commits = len(repo.commits)
    with pytest.raises(CardError, match="malformed"):
        evaluate_model(
            "tester/bad-card", str(SUBSET), max_samples=8, update_card=True, dataset_id="uoft-cs/cifar10"
        )
    assert len(repo.commits) == commits and hub.file("tester/bad-card", "README.md") == files["README.md"]
    # pushing an incomplete folder is refused before anything is uploaded
    with pytest.raises(ValueError, match="not a complete model repository"):
        push_folder(REPO / "assets" / "teachers" / "cifar10-resnet56", "tester/incomplete")
    assert not HfApi().repo_exists("tester/incomplete")


def test_evaluate_recipe_follows_HF_ENDPOINT_in_a_fresh_process(trained, hub, tmp_path):
    """The recipe as a user runs it: a new process configured only by HF_ENDPOINT, reading and updating the Hub."""
    repo_id = "tester/endpoint-check"
    push_folder(trained.folder, repo_id)
    env = subprocess_env(
        HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_TOKEN="hf_test_token", HF_HOME=str(tmp_path / "home")
    )
    cmd = [
        sys.executable,
        str(REPO / "recipes" / "evaluate.py"),
        "--model",
        repo_id,
        "--dataset",
        str(SUBSET),
    ]
    cmd += ["--max_samples", "8", "--update-card", "--dataset_id", "uoft-cs/cifar10"]
    cmd += ["--output_json", str(tmp_path / "r.json")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| top-1 accuracy |" in proc.stdout and "model card updated" in proc.stdout
    acc = json.loads((tmp_path / "r.json").read_text())["accuracy"]
    (tmp_path / "card.md").write_text(_readme(hub, repo_id))
    results = read_card(tmp_path / "card.md").data.eval_results
    assert any(r.dataset_split == "test[:8]" and r.metric_value == pytest.approx(acc) for r in results)
