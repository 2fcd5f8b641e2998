"""A wheel install works like a source install: it ships the card template and the metric scripts (~16 s).

The wheel is built from a copy of the repository's files (the repository tree is never written), installed without
dependencies into a scratch virtual environment that sees this environment's packages, and used from a folder
outside the repository, with ``PYTHONPATH`` cleared: a short distillation run saves its student
(``trainer.save_model()`` writes the model card) and both metric scripts load with ``evaluate.load`` and compute.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SHIPPED = ("model_cards", "metrics")

# Runs in the scratch environment, from a folder outside the repository.
RUN_FROM_WHEEL = textwrap.dedent(
    """
    import json, sys
    import torch
    from datasets import Dataset
    from transformers import TrainingArguments

    import hf_distill
    from hf_distill import DistillationTrainer
    from hf_distill.hub import load_metric
    from hf_distill.models.loading import load_model

    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog"}
    data = Dataset.from_dict(
        {"pixel_values": torch.rand(8, 3, 32, 32).tolist(), "labels": [0, 1] * 4, "index": list(range(8))}
    ).with_format("torch")
    args = TrainingArguments(
        output_dir=sys.argv[1], max_steps=1, per_device_train_batch_size=8, report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True,
    )
    trainer = DistillationTrainer(
        model=load_model("cifar_resnet8", id2label=labels),
        teacher=load_model("cifar_resnet8", id2label=labels),
        objective="kd",
        args=args,
        train_dataset=data,
        eval_dataset=data,
    )
    trainer.train()
    trainer.save_model()
    top1 = load_metric("accuracy").compute(predictions=[0, 1, 1], references=[0, 1, 0])
    top5 = load_metric("top5_accuracy").compute(
        predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], k=1
    )
    print(json.dumps({"package": hf_distill.__file__, "top1": top1, "top5": top5}))
    """
)


def build_wheel(dest: Path) -> Path:
    """Build the wheel from a copy of what the build reads, so that no build folder lands in the repository."""
    src = dest / "src"
    for name in ("hf_distill", *SHIPPED):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "-w",
            str(dest),
            "--no-deps",
            "--no-build-isolation",
            "-q",
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dest.glob("hf_distill-*.whl")
    return wheel


def scratch_venv(folder: Path) -> Path:
    """A virtual environment without hf_distill that imports this environment's installed packages.

    A path line in a ``.pth`` file adds this environment's site-packages after the venv's own without running the
    ``.pth`` files there, so the editable install of hf_distill in this environment stays invisible.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    parents = dict.fromkeys([sysconfig.get_paths()["purelib"], *site.getsitepackages()])
    Path(purelib, "parent_env.pth").write_text("".join(f"{p}\n" for p in parents))
    return python


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="70.1")  # the dev extra has it; older ones lack bdist_wheel
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_module_and_shipped_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "hf_distill").rglob("*.py")}
    expected |= {
        "hf_distill/_data/" + p.relative_to(REPO).as_posix()
        for top in SHIPPED
        for p in (REPO / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}: list their packages in pyproject.toml [tool.setuptools]"


def test_an_installed_wheel_writes_a_card_and_loads_the_metrics(wheel, tmp_path):
    venv = tmp_path / "venv"
    python = scratch_venv(venv)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "run.py").write_text(RUN_FROM_WHEEL)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    proc = subprocess.run(
        [str(python), "run.py", str(outside / "student")],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["package"]).is_relative_to(venv), out["package"]  # the wheel's copy, not the repository's
    assert out["top1"] == {"accuracy": pytest.approx(2 / 3)}
    assert out["top5"] == {"top1_accuracy": 0.5}  # k=1: the second sample scores class 0 higher
    card = (outside / "student" / "README.md").read_text()
    assert "knowledge-distillation" in card and "An image classifier (resnet8" in card
    assert (outside / "student" / "modeling_cifar.py").is_file()  # the remote code, copied from the package
