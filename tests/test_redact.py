"""Secrets never reach what a run records or uploads: command lines, the lock, ``training_args.bin``."""

import copy
import io
import json
import pickle

import torch
from transformers import TrainingArguments

from hf_distill.redact import REDACTED, HiddenToken, hide_token, redact_argv, redact_command, redact_text
from hf_distill.run.preflight import LOCK_NAME, acquire_lock

TOKEN = "hf_FAKEabcdefghijklmnopqrstuvwxyz0123"


def test_secret_flags_and_hub_tokens_are_redacted_from_a_command_line():
    argv = ["recipes/distill.py", "--hub_token", TOKEN, "--wandb-api-key=s3cret", "--seed", "3", "--x", TOKEN]
    assert redact_argv(argv) == [
        "recipes/distill.py", "--hub_token", REDACTED, f"--wandb-api-key={REDACTED}", "--seed", "3", "--x",
        REDACTED,
    ]  # fmt: skip
    assert TOKEN not in redact_command(argv) and "s3cret" not in redact_command(argv)
    assert redact_text(f"push with --hub_token={TOKEN} done") == f"push with --hub_token={REDACTED} done"
    assert redact_argv(["--seed", "3", "--output_dir", "out"]) == ["--seed", "3", "--output_dir", "out"]


def test_a_hidden_token_is_the_token_in_memory_and_a_placeholder_when_serialized():
    t = hide_token(TOKEN)
    assert isinstance(t, HiddenToken) and t == TOKEN and f"Bearer {t}" == f"Bearer {TOKEN}"
    assert copy.deepcopy(t) is t and copy.copy(t) is t
    assert pickle.loads(pickle.dumps(t)) == REDACTED and TOKEN not in repr(t)
    assert hide_token(None) is None


def test_training_args_pickled_by_the_trainer_hold_no_token(tmp_path):
    from hf_distill import DistillationTrainer
    from hf_distill.models.loading import load_model

    args = TrainingArguments(output_dir=str(tmp_path / "o"), hub_token=TOKEN, report_to="none", use_cpu=True)
    buf = io.BytesIO()
    torch.save(args, buf)
    assert TOKEN.encode() in buf.getvalue()  # upstream's own pickle holds it: the reason for HiddenToken
    student = load_model("cifar_resnet8", num_labels=10)
    trainer = DistillationTrainer(model=student, objective="none", args=args)
    assert trainer.args.hub_token == TOKEN  # still usable for uploads
    buf = io.BytesIO()
    torch.save(trainer.args, buf)
    assert TOKEN.encode() not in buf.getvalue() and REDACTED.encode() in buf.getvalue()
    assert TOKEN not in trainer.args.to_json_string()


def test_the_lock_records_a_redacted_command_and_is_named_for_upload_ignore_patterns(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["recipes/distill.py", "--push_to_hub", "--hub_token", TOKEN])
    path = acquire_lock(str(tmp_path))
    held = json.loads(open(path).read())
    assert TOKEN not in json.dumps(held) and held["command"].endswith(f"--hub_token {REDACTED}")
    # upstream Trainer.push_to_hub uploads the output folder with ignore_patterns ["_*", "checkpoint-*"]
    assert LOCK_NAME.startswith("_")
