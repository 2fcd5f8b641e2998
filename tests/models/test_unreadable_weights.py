"""A weights file that cannot be read (garbage, a crafted pickle, a truncated safetensors), given as
``--teacher_weights``/``--student_weights`` or inside a model folder, is one line that names the file and says what
to do: never a traceback, and no pickled code ever runs."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch

from hf_distill.models.convert_akamaster import read_akamaster_state_dict
from hf_distill.models.loading import ModelLoadError, load_model

_RAN = []


class _Payload:
    """Pickles to a call of :func:`_ran`: what a crafted checkpoint would run if it were unpickled freely."""

    def __reduce__(self):
        return (_RAN.append, ("code ran",))


def _garbage(path):
    path.write_bytes(os.urandom(300))


def _crafted(path):
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, path)


def _truncated(path):
    data = safetensors.torch.save({"w": torch.zeros(64, 64)})
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = [("garbage.pt", _garbage), ("crafted.th", _crafted), ("model.bin", _crafted), ("truncated.safetensors", _truncated)]  # fmt: skip


def _check(err: pytest.ExceptionInfo, path) -> None:
    msg = str(err.value)
    assert "\n" not in msg and repr(str(path)) in msg and "cannot be read" in msg
    assert (
        "Download or save the weights again" in msg and "weights_only" not in msg
    )  # no advice to unpickle freely
    assert not _RAN


@pytest.mark.parametrize("name, make", BAD_FILES, ids=[n for n, _ in BAD_FILES])
def test_an_unreadable_weights_file_is_one_line(tmp_path, name, make):
    path = tmp_path / name
    make(path)
    with pytest.raises(ModelLoadError) as err:
        load_model("cifar_resnet20", num_labels=10, weights=str(path), role="teacher")
    _check(err, path)
    assert str(err.value).startswith("The teacher weights file")
    if not name.endswith(".safetensors"):
        with pytest.raises(ModelLoadError) as err:
            read_akamaster_state_dict(path)
        _check(err, path)


@pytest.mark.parametrize("weights, make", [("pytorch_model.bin", _garbage), ("pytorch_model.bin", _crafted), ("model.safetensors", _truncated)])  # fmt: skip
def test_an_unreadable_weights_file_in_a_model_folder_is_one_line(tmp_path, weights, make):
    folder = tmp_path / "teacher"
    load_model("cifar_resnet8", num_labels=10).save_pretrained(folder)
    for f in ("model.safetensors", "pytorch_model.bin"):
        (folder / f).unlink(missing_ok=True)
    make(folder / weights)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(folder), role="teacher")
    _check(err, folder / weights)


def test_the_converter_command_prints_one_line(tmp_path, capsys):
    from hf_distill.models.convert_akamaster import main

    _crafted(tmp_path / "resnet56.th")
    with pytest.raises(SystemExit) as ex:
        main([str(tmp_path / "resnet56.th"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2 and err.startswith("error: The akamaster weights file") and "\n" not in err
