"""The Python examples of the README and docs/python_api.md run as written, and what each saves loads and predicts
in a process that has no hf_distill: a CIFAR-zoo pair, a timm pair on a user's own ``datasets`` transform, a
transformers ViT student."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

#: where the examples are written: the README's one and docs/python_api.md's two
EXAMPLE_FILES = ("README.md", "docs/python_api.md")

#: run in a fresh interpreter where ``import hf_distill`` fails: what a user who only downloads the folder has
RELOAD = """
import json, sys
sys.modules["hf_distill"] = None
import torch
from transformers import AutoModelForImageClassification
folder, kind = sys.argv[1], sys.argv[2]
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=(kind == "zoo")).eval()
x = torch.load(sys.argv[3])
with torch.no_grad():
    auto = model(pixel_values=x).logits
out = {"auto": auto.tolist(), "labels": [model.config.id2label[i] for i in range(model.config.num_labels)]}
if kind == "timm":
    import timm
    net = timm.create_model("local-dir:" + folder, pretrained=True).eval()
    with torch.no_grad():
        out["timm"] = net(x).tolist()
    out["timm_input_size"] = list(net.pretrained_cfg["input_size"])
print(json.dumps(out))
"""


def _example(name: str) -> str:
    marker = f"<!-- example:{name} -->\n```python\n"
    found = [text for f in EXAMPLE_FILES if marker in (text := (REPO / f).read_text())]
    assert len(found) == 1, f"example {name!r} must be written in exactly one of {EXAMPLE_FILES}"
    start = found[0].index(marker) + len(marker)
    return found[0][start : found[0].index("```\n", start)]


def _run_example(name: str, tmp_path, monkeypatch) -> dict:
    # as written, from a folder that looks like the repository (its assets/), so outputs/ lands in tmp_path
    (tmp_path / "assets").symlink_to(REPO / "assets")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_example(name), f"example:{name}", "exec"), scope)  # noqa: S102 - the documented example
    return scope


def _reload(folder, kind: str, x: torch.Tensor, tmp_path) -> dict:
    torch.save(x, tmp_path / "x.pt")
    p = subprocess.run(
        [sys.executable, "-c", RELOAD, str(folder), kind, str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _student_logits(trainer, x: torch.Tensor) -> torch.Tensor:
    student = trainer.model.student.eval()
    with torch.no_grad():
        return student(pixel_values=x).logits


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.slow
def test_the_zoo_example_saves_a_student_that_loads_without_hf_distill(tmp_path, monkeypatch):
    trainer = _run_example("zoo", tmp_path, monkeypatch)["trainer"]
    assert trainer.state.global_step == 4
    x = torch.randn(2, 3, 32, 32)
    got = _reload(tmp_path / "outputs" / "zoo_example", "zoo", x, tmp_path)
    assert torch.allclose(torch.tensor(got["auto"]), _student_logits(trainer, x), atol=1e-5)
    assert got["labels"] == CIFAR10
    assert (tmp_path / "outputs" / "zoo_example" / "README.md").exists()  # the card, from the Hub layer


@pytest.mark.slow
def test_the_timm_example_on_a_users_transform_saves_a_timm_folder(tmp_path, monkeypatch):
    trainer = _run_example("timm", tmp_path, monkeypatch)["trainer"]
    assert trainer.state.global_step == 2
    folder = tmp_path / "outputs" / "timm_example"
    x = torch.randn(2, 3, 32, 32)
    got = _reload(folder, "timm", x, tmp_path)
    mine = _student_logits(trainer, x)
    assert torch.allclose(torch.tensor(got["auto"]), mine, atol=1e-5)
    assert torch.allclose(torch.tensor(got["timm"]), mine, atol=1e-5)
    assert got["labels"] == CIFAR10  # the dataset's ClassLabel names, not LABEL_0..9
    assert got["timm_input_size"] == [3, 32, 32]  # the size it was trained at, not timm's default 224
    summary = json.loads((folder / "distillation_summary.json").read_text())
    assert summary["image_size"] == 32 and summary["label_names"] == CIFAR10  # what the card is written from
    assert (
        summary["teacher"] == "resnet18"
    )  # a raw timm teacher is named by its architecture, not "(unknown)"


@pytest.mark.slow
def test_the_transformers_example_trains_crd_without_an_index_column(tmp_path, monkeypatch):
    trainer = _run_example("transformers", tmp_path, monkeypatch)["trainer"]
    assert trainer.state.global_step == 2
    bank = trainer.model.objective.methods["crd"]
    assert bank is not None  # a per-row memory bank, fed by the index the trainer added
    x = torch.randn(2, 3, 32, 32)
    got = _reload(tmp_path / "outputs" / "vit_example", "transformers", x, tmp_path)
    assert torch.allclose(torch.tensor(got["auto"]), _student_logits(trainer, x), atol=1e-5)
    assert got["labels"] == CIFAR10


def test_a_users_rows_get_an_index_only_when_a_method_needs_one():
    from hf_distill.data.datasets import IndexedRows, collate

    rows = [{"pixel_values": torch.zeros(3, 4, 4), "labels": i % 2} for i in range(3)]
    assert "index" not in collate(rows)  # KD needs none: a plain user batch collates as it is
    wrapped = IndexedRows.if_needed(rows)
    assert [wrapped[i]["index"] for i in range(3)] == [0, 1, 2]
    assert collate([wrapped[2], wrapped[0]])["index"].tolist() == [2, 0]
    already = [{**r, "index": 7} for r in rows]
    assert IndexedRows.if_needed(already) is already
