"""README's Hub section runs as written: publish, load (with and without hf_distill), evaluate on a Hub dataset.

Every command and snippet runs in a fresh process configured only by ``HF_ENDPOINT`` (the Hub test double), from a
scratch folder (``outputs/`` lands there, never in the repository). The double serves the committed CIFAR-10 subset
as the dataset ``uoft-cs/cifar10`` (same columns and classes). The training command gets a shortening appended
(2 steps, 64 evaluation images); everything else is the README's text.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, SUBSET
from tests.hub.conftest import ZOO_REPO_FILES, site_without_hf_distill, subprocess_env

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()
MODEL = "me/resnet20-kd-cifar10"
DATASET = "uoft-cs/cifar10"
SHORTEN_TRAINING = ["--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "64"]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def example(name: str) -> str:
    """The code block right after ``<!-- hub-example:<name> -->`` in README.md."""
    m = re.search(rf"<!-- hub-example:{name} -->\n```\w+\n(.*?)```\n", README, re.S)
    assert m, f"README.md has no block after <!-- hub-example:{name} -->"
    return m.group(1)


def commands(name: str) -> list[list[str]]:
    """The example's shell commands as argv lists, run with this interpreter and the repository's recipes."""
    out = []
    for line in example(name).strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "python" and argv[1].startswith("recipes/"), line
        out.append([sys.executable, str(REPO / argv[1]), *argv[2:]])
    return out


def card_metadata(hub) -> dict:
    return yaml.safe_load(hub.file(MODEL, "README.md").decode().split("---")[1])


def test_the_readme_hub_section_runs_against_the_hub(hub_server, tmp_path):
    hub = hub_server
    data = hub.create(DATASET, repo_type="dataset")
    hub._commit(data, "upload", {f.name: f.read_bytes() for f in SUBSET.iterdir()})
    env = subprocess_env(
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",
        HF_DATASETS_OFFLINE="0",
        HF_TOKEN="hf_test_token",
        HF_HOME=str(tmp_path / "home"),
    )

    def run(argv: list[str]) -> str:
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        return proc.stdout

    # publish: at the end of training, then again with recipes/push.py (which adds the dataset id to the card)
    train, push = commands("publish")
    run(train + SHORTEN_TRAINING)
    files = set(hub.repo(MODEL).resolve("main").files)
    assert ZOO_REPO_FILES | {"training_curves.png"} <= files
    assert not any(f.startswith("checkpoint-") for f in files)
    run(push)
    meta = card_metadata(hub)
    assert meta["datasets"] == [DATASET] and meta["distillation"]["methods"] == ["kd"]

    # load without hf_distill: the model code comes from the repository (remote code)
    snippet = tmp_path / "load_remote_code.py"
    snippet.write_text(example("load-remote-code"))
    site = site_without_hf_distill(tmp_path / "site")
    # -S: no site-packages hooks (the editable install); the site copy without hf_distill goes on the path
    no_hf_distill = [
        sys.executable,
        "-S",
        "-c",
        f"import sys; sys.path.insert(0, {site!r}); exec(open({str(snippet)!r}).read())",
    ]
    env_without = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        no_hf_distill, cwd=tmp_path, env=env_without, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() in CIFAR10
    check = [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {site!r}); import hf_distill"]
    assert subprocess.run(check, cwd=tmp_path, env=env_without, capture_output=True).returncode != 0

    # load with hf_distill installed: its own class, no downloaded code
    assert (
        run([sys.executable, "-c", example("load-installed")]).strip() == "hf_distill.models.modeling_cifar"
    )

    # evaluate the Hub model on the Hub dataset and merge the result into the Hub card
    (evaluate,) = commands("evaluate")
    out = run(evaluate)
    assert "| top-1 accuracy |" in out and "model card updated" in out
    (entry,) = card_metadata(hub)["model-index"]
    splits = {
        (r["dataset"]["type"], r["dataset"]["split"]): {m["type"] for m in r["metrics"]}
        for r in entry["results"]
    }
    assert splits[(DATASET, "test")] == {"accuracy", "top5_accuracy"}  # the full 1,000-image split
