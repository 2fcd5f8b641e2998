"""A complete repository folder: weights + config + processor for each student kind, loadable without hf_distill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    TimmWrapperForImageClassification,
)

from hf_distill.data.datasets import collate, prepare_split
from hf_distill.hub import check_folder, model_input_spec
from tests.helpers import CIFAR_SPEC
from tests.hub.conftest import load_recipe, model_files, site_without_hf_distill, subprocess_env


def _batch(prepared, n=8):
    return collate([prepared.dataset[i] for i in range(n)])


def test_zoo_folder_is_complete_and_loads_with_auto_classes(trained):
    folder = trained.folder
    assert check_folder(folder) == []
    names = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= names
    assert {"modeling_cifar.py", "configuration_cifar.py", "cifar_common.py", "cifar_resnet.py"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert (
        config["auto_map"]["AutoModelForImageClassification"] == "modeling_cifar.CifarForImageClassification"
    )
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    # the processor reproduces the evaluation transform the student was trained/evaluated with
    raw = [trained.test_raw[i]["img"] for i in range(8)]
    batch = _batch(trained.eval_split)
    x = processor(images=raw, return_tensors="pt")["pixel_values"]
    assert torch.allclose(x, batch["pixel_values"], atol=1e-5)
    student = trained.trainer.model.student.eval()
    with torch.no_grad():
        assert torch.allclose(model(x).logits, student(batch["pixel_values"]).logits, atol=1e-5)


ISOLATED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])          # site-packages without hf_distill
    try:
        import hf_distill
    except ImportError:
        pass
    else:
        raise SystemExit(f"hf_distill is importable from {hf_distill.__file__}")
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    folder, io = sys.argv[2], sys.argv[3]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    AutoImageProcessor.from_pretrained(folder)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    x = torch.load(io + "/x.pt")
    with torch.no_grad():
        torch.save(model(x).logits, io + "/logits.pt")
    print("loaded", type(model).__name__, "from", type(model).__module__)
    """
)


def test_zoo_student_loads_with_remote_code_where_hf_distill_is_not_installed(trained, tmp_path):
    x = torch.randn(4, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "isolated.py").write_text(ISOLATED)
    site = site_without_hf_distill(tmp_path / "site")
    # -I: no user site, no PYTHON* variables, script dir not trusted; -S: no site-packages .pth hooks (the editable
    # install of hf_distill); cwd outside the repository.
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(tmp_path / "isolated.py"), site, str(trained.folder), str(tmp_path)],
        cwd=tmp_path,
        env=subprocess_env(HF_MODULES_CACHE=str(tmp_path / "modules")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loaded CifarForImageClassification from transformers_modules" in proc.stdout
    student = trained.trainer.model.student.eval()
    with torch.no_grad():
        expected = student(x).logits
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-6)


def test_timm_student_is_saved_in_timms_format(timm_folder, subset_test):
    student, folder = timm_folder
    assert check_folder(folder) == []
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 10
    assert config["label_names"][:2] == ["airplane", "automobile"]
    pc = config["pretrained_cfg"]
    assert pc["input_size"] == [3, 32, 32] and pc["crop_pct"] == 1.0 and pc["mean"] == list(CIFAR_SPEC.mean)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = student(x).logits
        # timm itself: the local file through pretrained_cfg_overlay (hf-hub: is tested against the Hub double),
        # and the folder as a local-dir: model
        t = timm.create_model(
            config["architecture"],
            pretrained=True,
            pretrained_cfg_overlay=dict(pc, file=str(folder / "model.safetensors")),
        ).eval()
        assert t.num_classes == 10 and torch.allclose(t(x), expected, atol=1e-6)
        t2 = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        assert (
            torch.allclose(t2(x), expected, atol=1e-6) and t2.pretrained_cfg["label_names"][0] == "airplane"
        )
        # transformers: the timm wrapper and its image processor
        m = AutoModelForImageClassification.from_pretrained(folder).eval()
        assert isinstance(m, TimmWrapperForImageClassification) and m.config.id2label[0] == "airplane"
        assert torch.allclose(m(x).logits, expected, atol=1e-6)
    proc = AutoImageProcessor.from_pretrained(folder)
    spec = model_input_spec(m, proc)
    assert spec == CIFAR_SPEC
    prepared = prepare_split(subset_test, spec.mean, spec.std, 32, False, max_samples=4)
    raw = [subset_test[i]["img"] for i in range(4)]
    assert torch.allclose(proc(raw)["pixel_values"], _batch(prepared, 4)["pixel_values"], atol=1e-5)
    text = (folder / "README.md").read_text()
    assert "library_name: timm" in text and 'timm.create_model(f"hf-hub:{model_id}"' in text


@pytest.mark.parametrize("results_file", ["all_results.json", "distill_results.json"])  # now, and older runs
def test_push_recipe_completes_a_plain_run_folder(trained, tmp_path, results_file):
    """recipes/push.py on a folder written without the trainer hook: the card is rebuilt from the run files."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name, data in model_files(
        trained.folder, ("config.json", "model.safetensors", "training_args.json")
    ).items():
        (folder / name).write_bytes(data)
    results = {
        "eval_accuracy": 0.25,
        "eval_teacher_accuracy": 0.8,
        "objective": {"ce_weight": 0.1, "methods": {"kd": {"weight": 0.9, "temperature": 4.0}}},
    }
    (folder / results_file).write_text(json.dumps(results))
    push = load_recipe("push")
    out = push.main(
        [
            str(folder),
            "--no_push",
            "--teacher",
            "me/teacher",
            "--dataset",
            "cifar10-subset",
            "--baseline_accuracy",
            "0.2",
        ]
    )
    assert out["repo_id"] is None
    assert check_folder(folder) == []
    meta = (folder / "README.md").read_text()
    assert "teacher: me/teacher" in meta and "gain: 0.05" in meta and "| `kd` | 0.9 | temperature=4 |" in meta
    assert "| learning_rate |" in meta  # the hyperparameters were read from training_args.json
    with pytest.raises(SystemExit) as e:
        push.main([str(folder)])  # neither --hub_model_id nor --no_push
    assert e.value.code == 2


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a crafted ``training_args.bin`` could do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("with_config", [True, False])
def test_a_crafted_pickle_in_a_model_folder_never_runs(tmp_path, with_config):
    """A folder's ``training_args.bin`` is never unpickled, by the card code or by recipes/push.py."""
    import pickle

    from hf_distill.hub import summary_from_folder

    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "training_args.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    if with_config:
        (folder / "config.json").write_text(
            json.dumps({"model_type": "hf_distill_cifar", "id2label": {"0": "a"}})
        )
        summary = summary_from_folder(folder)
        assert summary.training == {}
    else:
        with pytest.raises(FileNotFoundError):
            summary_from_folder(folder)
    with pytest.raises(SystemExit):
        load_recipe("push").main([str(folder), "--no_push"])
    assert not marker.exists()
