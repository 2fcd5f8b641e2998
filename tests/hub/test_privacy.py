"""Nothing secret or machine-specific leaves the machine: a real run pushed twice, every uploaded byte scanned."""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile

import pytest

from tests.conftest import REPO
from tests.hub.conftest import load_recipe

FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken1234"
SHORT_RUN = [
    "--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "64", "--disable_tqdm", "true",
    "--report_to", "none", "--save_strategy", "no",
]  # fmt: skip


def private_strings(tmp_path) -> dict[str, str]:
    """What must never be in a public repository, by what it is."""
    return {
        "the Hub token": FAKE_TOKEN,
        "the checkout path": str(REPO),
        "the test's tmp path": str(tmp_path),
        "the test's tmp path (resolved)": os.path.realpath(tmp_path),
        "the tmp root": tempfile.gettempdir() + os.sep,
    }


def _searched_bytes(path: str, data: bytes) -> bytes:
    """A file's name and the part of it that can hold text: a safetensors file's header, a PNG's nothing (the
    tensor bytes and pixels would match a short host name by chance), any other file whole."""
    if path.endswith(".safetensors"):
        data = data[: 8 + int.from_bytes(data[:8], "little")]
    elif path.endswith(".png"):
        data = b""
    return path.encode() + b"\n" + data


def scan_repo(hub, repo_id: str, secrets: dict[str, str]) -> list[str]:
    """``file: what`` for every file of every commit of the repository that holds one of ``secrets`` or the host
    name (as a whole word)."""
    host = re.compile(
        rb"(?<![A-Za-z0-9_-])" + re.escape(socket.gethostname().encode()) + rb"(?![A-Za-z0-9_-])"
    )
    hits = set()
    for commit in hub.repo(repo_id).commits:
        for path, data in commit.files.items():
            found = [what for what, needle in secrets.items() if needle.encode() in data or needle in path]
            found += ["the host name"] if host.search(_searched_bytes(path, data)) else []
            hits.update(f"{path}: {what}" for what in found)
    return sorted(hits)


@pytest.mark.slow
def test_a_run_pushed_with_a_token_then_pushed_again_leaks_nothing(hub, tmp_path, monkeypatch):
    repo_id = "tester/scan"
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    argv = ["--output_dir", str(out), "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", FAKE_TOKEN]
    argv += SHORT_RUN
    monkeypatch.setattr(
        sys, "argv", ["recipes/distill.py", *argv]
    )  # the command line, as a shell would give it
    load_recipe("distill").main(argv)
    assert hub.repo(repo_id) is not None and len(hub.repo(repo_id).commits) >= 2
    load_recipe("push").main([str(out), "--hub_model_id", repo_id, "--token", FAKE_TOKEN])
    hits = scan_repo(hub, repo_id, private_strings(tmp_path))
    assert hits == [], hits
