"""Fixtures of the Hub-integration tests: a tiny distilled student and the Hub test double.

``trained`` trains a CIFAR-zoo ``resnet8`` student for 2 steps against the committed resnet56 teacher on the
committed CIFAR-10 subset, saves it with ``trainer.save_model()`` (which completes the folder for the Hub) and is
shared by the whole package. ``hub`` points huggingface_hub at :class:`tests.hub.hub_server.HubTestServer` on
127.0.0.1, exactly as a process started with ``HF_ENDPOINT=<server url>`` would be configured.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from hf_distill import DistillationTrainer
from hf_distill.data.datasets import prepare_split
from hf_distill.hub import DistillationSummary, complete_folder
from hf_distill.models.loading import load_model
from hf_distill.models.normalization import input_spec
from tests.conftest import REPO, TEACHER_DIR
from tests.helpers import CIFAR_SPEC, timm_model, trainer_args
from tests.hub.hub_server import HubTestServer

NUM_EVAL = 64
#: what every published zoo-student repository holds (at least)
ZOO_REPO_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "modeling_cifar.py",
}


@dataclass
class Trained:
    trainer: DistillationTrainer
    folder: Path
    eval_split: object
    test_raw: object


@pytest.fixture(scope="session")
def trained(tmp_path_factory, subset_train, subset_test) -> Trained:
    names = subset_train.features["label"].names
    teacher = load_model(str(TEACHER_DIR), role="teacher")
    student = load_model("cifar_resnet8", id2label=dict(enumerate(names)))
    spec = input_spec(student)
    train = prepare_split(subset_train, spec.mean, spec.std, 32, True, max_samples=32)
    test = prepare_split(subset_test, spec.mean, spec.std, 32, False, max_samples=NUM_EVAL)
    folder = tmp_path_factory.mktemp("student") / "cifar10-resnet8-kd"
    args = trainer_args(
        folder,
        per_device_eval_batch_size=NUM_EVAL,
        optim_args="momentum=0.9",
        eval_strategy="steps",
        eval_steps=1,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        objective="kd",
        args=args,
        train_dataset=train.dataset,
        eval_dataset=test.dataset,
    )
    trainer.train()
    trainer.evaluate()
    trainer.save_model()
    return Trained(trainer, folder, test, subset_test)


@pytest.fixture
def student_copy(trained, tmp_path) -> Path:
    """A private copy of the saved student folder, for tests that modify it."""
    dst = tmp_path / trained.folder.name
    shutil.copytree(trained.folder, dst)
    return dst


@pytest.fixture(scope="session")
def timm_folder(tmp_path_factory, subset_test):
    """A timm student (transformers' timm wrapper) completed into a timm-format folder."""
    student = timm_model(seed=3).eval()
    names = subset_test.features["label"].names
    student.config.id2label = dict(enumerate(names))
    student.config.label2id = {n: i for i, n in enumerate(names)}
    folder = tmp_path_factory.mktemp("timm") / "timm-student"
    student.save_pretrained(folder)  # what the trainer's save writes: transformers' wrapper format
    summary = DistillationSummary(
        model_name="timm-student",
        dataset="cifar10-subset",
        image_size=32,
        image_mean=list(CIFAR_SPEC.mean),
        image_std=list(CIFAR_SPEC.std),
        label_names=names,
    )
    complete_folder(summary, folder, student=student, spec=CIFAR_SPEC)
    return student, folder


@pytest.fixture(scope="session")
def hub_server():
    server = HubTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, monkeypatch, tmp_path) -> HubTestServer:
    """huggingface_hub configured for the test double (what ``HF_ENDPOINT=<url>`` at process start gives)."""
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_api

    url = hub_server.url
    cache = str(tmp_path / "hub-cache")
    for k, v in {
        "HF_ENDPOINT": url,
        "HF_TOKEN": "hf_test_token",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": cache,
    }.items():
        monkeypatch.setenv(k, v)
    # huggingface_hub reads these environment variables once, at import: set what the import would have set.
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    return hub_server


def error_line(capsys) -> str:
    """The one ``error: ...`` line a recipe printed for bad input (and no traceback)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python process: offline unless told otherwise, quiet, no stray tokens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
    env.update(extra)
    return env


def load_recipe(name: str) -> ModuleType:
    """Import ``recipes/<name>.py`` as the module ``<name>_recipe`` (never ``evaluate``: that would shadow the
    evaluate library); it is registered in ``sys.modules`` because its dataclasses resolve annotations there."""
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", REPO / "recipes" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def model_files(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The contents of ``names`` in ``folder`` plus every remote-code ``.py`` file there, by file name."""
    files = {name: (folder / name).read_bytes() for name in names}
    files.update({f: (folder / f).read_bytes() for f in os.listdir(folder) if f.endswith(".py")})
    return files


def site_without_hf_distill(dst) -> str:
    """A copy of site-packages (as symlinks) without hf_distill and its editable-install hooks."""
    site = sysconfig.get_paths()["purelib"]
    dst.mkdir()
    for name in os.listdir(site):
        if "hf_distill" in name or name.endswith(".pth"):
            continue
        os.symlink(os.path.join(site, name), dst / name)
    return str(dst)
