"""Publishing that is safe and true (issue 28): what goes up and what stays home, the dry run, foreign code, card
metadata, the Hub's Eval Results files, TensorBoard logs, failures as one line; incomplete folders (issue 24)."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import zlib

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_distill import DistillationTrainer
from hf_distill.data.datasets import prepare_split
from hf_distill.hub import DistillationSummary, PublishError, build_card, push_folder
from hf_distill.hub.code_check import own_remote_code
from hf_distill.hub.eval_files import read_eval_result_files
from hf_distill.hub.reporting import MissingPackageError, check_report_to
from hf_distill.models.loading import load_model
from tests.conftest import REPO, SUBSET, TEACHER_DIR
from tests.helpers import timm_model, trainer_args
from tests.hub.conftest import ZOO_REPO_FILES, error_line, load_recipe

FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken1234"
HOST = socket.gethostname()
EVAL_FILE = ".eval_results/uoft-cs--cifar10--test.yaml"


def _files(hub, repo_id: str) -> dict[str, bytes]:
    return hub.repo(repo_id).resolve("main").files


def _record(data: bytes) -> bytes:
    """One TFRecord (TensorBoard's framing: length, its checksum, data, its checksum; the checksums here are
    stand-ins, which the scrubbing neither reads nor changes)."""
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", zlib.crc32(n)) + data + struct.pack("<I", zlib.crc32(data))


def approx_metrics(measured: dict) -> dict:
    """The accuracies of an evaluation, as a card or an Eval Results file holds them (rounded to 6 places)."""
    return {k: pytest.approx(measured[k], abs=1e-6) for k in ("accuracy", "top5_accuracy")}


def _snapshot(folder) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(r, n), folder): open(os.path.join(r, n), "rb").read()
        for r, _, names in os.walk(folder)
        for n in names
    }


# -- 1. what goes up, what stays home ------------------------------------------------------------------------------
def test_a_push_sends_only_what_belongs_in_a_repository(student_copy, hub):
    folder = student_copy
    lock = f"pid 4242 host {HOST} command recipes/distill.py --hub_token {FAKE_TOKEN}"
    (folder / "_hf_distill.lock").write_text(lock)
    (folder / ".hf_distill.lock").write_text(lock)  # the name of earlier versions
    (folder / "training_args.json").write_text(json.dumps({"output_dir": str(folder)}))
    (folder / "training_args.bin").write_bytes(str(folder).encode())
    (folder / ".env").write_text(f"HF_TOKEN={FAKE_TOKEN}")
    (folder / "_scratch.txt").write_text("private")
    for sub in ("checkpoint-1", "init_stage", "peer1"):
        (folder / sub).mkdir()
        (folder / sub / "model.safetensors").write_bytes(b"x")
    run = folder / "runs" / f"May01_12-00-00_{HOST}"
    run.mkdir(parents=True)
    args_record = _record(b"text args " + json.dumps({"output_dir": str(folder)}).encode())
    scalar_record = _record(b"scalar train/loss 2.3")
    (run / f"events.out.tfevents.1714560000.{HOST}.4242.0").write_bytes(args_record + scalar_record)
    (folder / ".eval_results").mkdir()
    (folder / EVAL_FILE).write_text("- dataset: {id: uoft-cs/cifar10, task_id: accuracy}\n  value: 0.5\n")

    push_folder(folder, "tester/what-belongs", token=FAKE_TOKEN)
    files = _files(hub, "tester/what-belongs")
    event = "runs/May01_12-00-00/events.out.tfevents.1714560000.0"
    assert set(files) - {".gitattributes"} == set(_snapshot(folder)) - {
        "_hf_distill.lock",
        ".hf_distill.lock",
        "training_args.json",
        "training_args.bin",
        ".env",
        "_scratch.txt",
        "checkpoint-1/model.safetensors",
        "init_stage/model.safetensors",
        "peer1/model.safetensors",
        f"runs/May01_12-00-00_{HOST}/events.out.tfevents.1714560000.{HOST}.4242.0",
    } | {event}
    assert ZOO_REPO_FILES | {EVAL_FILE} <= set(files)
    # the TensorBoard log goes up without the host and pid in its name and without the record naming the folder
    assert files[event] == scalar_record


def test_a_push_deletes_what_an_earlier_push_left_in_the_same_commit(student_copy, hub):
    repo = hub.create("tester/cleanup")
    earlier = {
        ".hf_distill.lock": f"host {HOST} --hub_token {FAKE_TOKEN}".encode(),
        "_hf_distill.lock": b"pid 1",
        "training_args.bin": b"pickle",
        f"runs/May01_12-00-00_{HOST}/events.out.tfevents.1.{HOST}.7.0": b"",
        "notes.md": b"a file of the user's: kept",
    }
    hub._commit(repo, "an earlier push", {**repo.resolve("main").files, **earlier})
    commits = len(repo.commits)
    push_folder(student_copy, "tester/cleanup")
    assert len(repo.commits) == commits + 1  # upload and deletions: one commit
    files = _files(hub, "tester/cleanup")
    assert "notes.md" in files and ZOO_REPO_FILES <= set(files)
    assert not set(earlier) - {"notes.md"} & set(files)


def test_a_push_refuses_a_file_that_holds_a_secret_or_a_local_path(student_copy, hub):
    readme = student_copy / "README.md"
    clean = readme.read_text()
    readme.write_text(clean + f"\nlogin: {FAKE_TOKEN}\n")
    with pytest.raises(PublishError, match=r"README.md holds a Hub token.*Remove it"):
        push_folder(student_copy, "tester/refused")
    readme.write_text(clean)
    (student_copy / "notes.txt").write_text(f"trained in {student_copy}")
    with pytest.raises(PublishError, match=r"notes.txt holds the model folder's path"):
        push_folder(student_copy, "tester/refused")
    assert hub.repo("tester/refused") is None  # refused before anything was sent


def test_the_trainers_push_leaks_nothing(trained, hub, tmp_path):
    """DistillationTrainer.push_to_hub with a token given as --hub_token, a local dataset, an absolute output
    folder: no file of the repository holds any of them."""
    t = trained.trainer
    saved = (t.args.output_dir, t.args.hub_model_id, t.hub_model_id, t.args.hub_token)
    t.args.output_dir, t.args.hub_model_id, t.hub_model_id = str(tmp_path / "out"), "tester/by-trainer", None
    t.args.hub_token = FAKE_TOKEN
    try:
        t.push_to_hub(dataset=str(SUBSET))
    finally:
        t.args.output_dir, t.args.hub_model_id, t.hub_model_id, t.args.hub_token = saved
    files = _files(hub, "tester/by-trainer")
    assert ZOO_REPO_FILES <= set(files) and "training_args.bin" not in files
    for needle in (FAKE_TOKEN, str(REPO), str(tmp_path), os.path.realpath(tmp_path)):
        assert not [p for p, data in files.items() if needle.encode() in data or needle in p], needle
    meta = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert "datasets" not in meta  # a local dataset is no Hub id
    assert "the local dataset `cifar10-subset`" in files["README.md"].decode()


# -- 2. the dry run ------------------------------------------------------------------------------------------------
def test_the_dry_run_lists_compares_and_changes_nothing(student_copy, hub, capsys):
    push_folder(student_copy, "tester/dry")
    repo = hub.repo("tester/dry")
    hub._commit(
        repo, "a lock left by an older version", {**repo.resolve("main").files, ".hf_distill.lock": b"x"}
    )
    commits, before = len(repo.commits), _snapshot(student_copy)
    (student_copy / "_hf_distill.lock").write_text("held")
    before["_hf_distill.lock"] = b"held"
    argv = [str(student_copy), "--hub_model_id", "tester/dry", "--dataset", "uoft-cs/cifar10", "--dry_run"]
    out = load_recipe("push").main(argv)
    text = capsys.readouterr().out
    assert len(repo.commits) == commits and _snapshot(student_copy) == before  # nothing changed anywhere
    rows = {
        path: status
        for status, path in re.findall(r"^(new|changed|same|delete) .*?(\S+)(?: \(.*\))?$", text, re.M)
    }
    assert rows["README.md"] == "changed"  # the card now names the dataset
    assert rows[EVAL_FILE.replace("test", "test-first-64")] == "new"
    assert rows["model.safetensors"] == "same" and rows[".hf_distill.lock"] == "delete"
    assert "_hf_distill.lock" not in rows and "training_args.json" not in rows
    assert re.search(r"^same\s+[\d.]+ k?B  config.json$", text, re.M)  # status, size, path
    assert "scan: no Hub token, host name or local path" in text
    assert "--- README.md ---\n---\n" in text and "- uoft-cs/cifar10" in text  # the card, as it would go up
    assert {f.path_in_repo for f in out["plan"].upload} == set(rows) - {".hf_distill.lock"}


# -- 3. foreign code -----------------------------------------------------------------------------------------------
def test_code_hf_distill_did_not_write_is_refused_in_one_line(student_copy, hub, capsys):
    push = load_recipe("push")
    assert own_remote_code(student_copy)  # the library's own files, recognised by content
    with open(student_copy / "modeling_cifar.py", "a") as f:
        f.write("\nimport os  # anything at all\n")
    with pytest.raises(SystemExit) as e:
        push.main([str(student_copy), "--hub_model_id", "tester/foreign"])
    assert e.value.code == 2 and hub.repo("tester/foreign") is None
    line = error_line(capsys)
    assert "modeling_cifar.py" in line and "--allow_foreign_code" in line
    push.main([str(student_copy), "--hub_model_id", "tester/foreign", "--allow_foreign_code"])
    card = _files(hub, "tester/foreign")["README.md"].decode()
    usage = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "trust_remote_code" not in usage  # never advised for code hf_distill did not write
    assert "code that hf_distill did not write (modeling_cifar.py)" in card


def test_an_auto_map_to_other_code_is_refused(student_copy, hub, capsys):
    config = json.loads((student_copy / "config.json").read_text())
    config["auto_map"]["AutoModelForImageClassification"] = "evil.Model"
    (student_copy / "config.json").write_text(json.dumps(config))
    (student_copy / "evil.py").write_text("raise SystemExit\n")
    with pytest.raises(SystemExit):
        load_recipe("push").main([str(student_copy), "--hub_model_id", "tester/auto-map"])
    assert "evil.py" in error_line(capsys) and hub.repo("tester/auto-map") is None


# -- 4. card metadata that is true ---------------------------------------------------------------------------------
def test_a_local_copy_is_filed_under_a_hub_id_only_when_the_user_says_so(student_copy, hub, capsys, tmp_path):
    push = load_recipe("push")
    push.main([str(student_copy), "--hub_model_id", "tester/asserted", "--dataset", "uoft-cs/cifar10"])
    card = ModelCard(_files(hub, "tester/asserted")["README.md"].decode())
    assert card.data.datasets == ["uoft-cs/cifar10"]
    assert "a local copy `cifar10-subset`" in card.text and "states holds the same data as" in card.text
    (res,) = card.data.to_dict()["model-index"][0]["results"]
    assert (
        res["dataset"]["type"] == "uoft-cs/cifar10" and "local copy cifar10-subset" in res["dataset"]["name"]
    )
    # evaluating the same split again replaces the entry: still one per (task, dataset, config, split)
    out = tmp_path / "r.json"
    evaluate = load_recipe("evaluate")
    argv = ["--model", str(student_copy), "--dataset", str(SUBSET), "--max_samples", "64", "--update-card"]
    evaluate.main(argv + ["--dataset_id", "uoft-cs/cifar10", "--output_json", str(out)])
    measured = json.loads(out.read_text())
    (entry,) = yaml.safe_load((student_copy / "README.md").read_text().split("---")[1])["model-index"]
    (res,) = entry["results"]
    assert res["dataset"]["split"] == "test[:64]"
    assert {m["type"]: m["value"] for m in res["metrics"]} == approx_metrics(measured)
    # 5. the Eval Results file of that split holds the same values, read back from the file
    (entries,) = read_eval_result_files(student_copy).values()
    assert {e.task_id: e.value for e in entries} == approx_metrics(measured)
    assert all(e.dataset_id == "uoft-cs/cifar10" and "local copy cifar10-subset" in e.notes for e in entries)
    # without the statement, a local dataset is never filed: one line, before evaluating
    with pytest.raises(SystemExit):
        evaluate.main(argv)
    assert "--dataset_id" in error_line(capsys)


def test_the_teacher_is_linked_by_its_hub_id_and_never_the_base_model(student_copy, capsys):
    summary = DistillationSummary.load(student_copy)
    card = build_card(summary, teacher="org/resnet56-teacher")
    assert "[org/resnet56-teacher](https://huggingface.co/org/resnet56-teacher)" in card.text
    assert card.data.base_model is None
    local = build_card(summary, teacher=str(TEACHER_DIR))  # a local teacher: its name, never its path
    assert "`cifar10-resnet56` (a local model)" in local.text and str(TEACHER_DIR) not in str(local)
    with pytest.raises(SystemExit):
        load_recipe("push").main(
            [str(student_copy), "--no_push", "--teacher", "me/t", "--base_model", "me/t"]
        )
    assert "never the teacher" in error_line(capsys)


def test_a_timm_student_trained_at_32_pixels_is_published_at_32_pixels(subset_train, tmp_path):
    """Through the Python API, no student_input given: the spec read from the timm model says 160 pixels."""
    student = timm_model(seed=1)
    names = subset_train.features["label"].names
    student.config.id2label = dict(enumerate(names))
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    train = prepare_split(subset_train, mean, std, 32, True, max_samples=16)
    trainer = DistillationTrainer(
        model=student,
        teacher=load_model(str(TEACHER_DIR), role="teacher"),
        objective="kd",
        args=trainer_args(tmp_path / "timm32", max_steps=1, per_device_train_batch_size=16),
        train_dataset=train.dataset,
    )
    trainer.train()
    trainer.save_model()
    config = json.loads((tmp_path / "timm32" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert "**Input:** 32x32 RGB" in (tmp_path / "timm32" / "README.md").read_text()


# -- 5. Eval Results on the Hub ------------------------------------------------------------------------------------
def test_evaluating_a_hub_model_commits_card_and_eval_results_together(trained, hub, tmp_path):
    from hf_distill.hub import evaluate_model

    push_folder(trained.folder, "tester/eval-results")
    repo = hub.repo("tester/eval-results")
    commits = len(repo.commits)
    result = evaluate_model(
        "tester/eval-results", str(SUBSET), max_samples=16, update_card=True, dataset_id="uoft-cs/cifar10"
    )
    assert len(repo.commits) == commits + 1
    files = _files(hub, "tester/eval-results")
    entries = yaml.safe_load(files[".eval_results/uoft-cs--cifar10--test-first-16.yaml"])
    got = {e["dataset"]["task_id"]: e["value"] for e in entries}
    assert got == approx_metrics(result.metrics())
    assert all(e["dataset"]["id"] == "uoft-cs/cifar10" for e in entries)


# -- 6. TensorBoard ------------------------------------------------------------------------------------------------
def test_report_to_tensorboard_without_the_package_is_one_clear_error(monkeypatch):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(
        MissingPackageError, match=r"^--report_to tensorboard needs .*`pip install tensorboard`"
    ):
        check_report_to(["tensorboard"])
    check_report_to(["none"])
    check_report_to("all")  # upstream's "every logger that is installed"
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    check_report_to("tensorboard")


# -- 7. failures are one line --------------------------------------------------------------------------------------
def test_a_push_with_no_network_is_one_line(student_copy, monkeypatch, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(SystemExit) as e:
        load_recipe("push").main([str(student_copy), "--hub_model_id", "tester/offline", "--token", "hf_x"])
    line = error_line(capsys)
    assert e.value.code == 2
    assert (
        "The Hub at http://127.0.0.1:9 could not be reached" in line and "nothing was changed on it" in line
    )


def test_the_dry_run_works_offline_and_says_it_could_not_compare(student_copy, monkeypatch, capsys):
    """What would leave the machine is known without the Hub: listed, with the reason nothing was compared."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    capsys.readouterr()
    load_recipe("push").main([str(student_copy), "--hub_model_id", "tester/offline", "--dry_run"])
    out = capsys.readouterr().out
    assert "not compared with tester/offline: The Hub at http://127.0.0.1:9 could not be reached" in out
    assert "model.safetensors" in out and "config.json" in out and "--- README.md ---" in out


def test_an_interrupted_upload_leaves_the_repository_as_it_was(student_copy, hub, capsys):
    push = load_recipe("push")
    argv = [str(student_copy), "--hub_model_id", "tester/interrupted"]
    push.main(argv)
    repo = hub.repo("tester/interrupted")
    commits, files = len(repo.commits), dict(_files(hub, "tester/interrupted"))
    (student_copy / "notes.md").write_text("a new file")
    hub.cut_off = ("POST", r"/commit/main$")
    with pytest.raises(SystemExit):
        push.main(argv)
    line = error_line(capsys)
    assert "could not be reached" in line and "no commit was made, tester/interrupted is as it was" in line
    assert len(repo.commits) == commits and _files(hub, "tester/interrupted") == files
    push.main(argv)  # again, once the network is back: one commit with everything
    assert len(repo.commits) == commits + 1 and "notes.md" in _files(hub, "tester/interrupted")


# -- issue 24: an incomplete folder ---------------------------------------------------------------------------------
def test_an_incomplete_model_folder_is_one_line_saying_how_to_recover(student_copy, capsys):
    evaluate, push = load_recipe("evaluate"), load_recipe("push")
    evaluate_argv = ["--model", str(student_copy), "--dataset", str(SUBSET), "--max_samples", "8"]
    (student_copy / "model.safetensors").unlink()
    with pytest.raises(SystemExit):
        evaluate.main(evaluate_argv)
    assert "incomplete model folder: it has no weights" in error_line(capsys)
    (student_copy / "config.json").write_text("")  # a kill during the final save
    for recipe, argv in ((evaluate, evaluate_argv), (push, [str(student_copy), "--no_push"])):
        with pytest.raises(SystemExit):
            recipe.main(argv)
        line = error_line(capsys)
        assert "incomplete model folder: its config.json is empty" in line
        assert "--resume_from_checkpoint true" in line and "save_pretrained" in line
