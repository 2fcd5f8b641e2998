"""The committed models really are the pretrained networks they claim to be, and load like any model folder."""

import pytest
import safetensors.torch
import torch

from hf_distill.data.datasets import collate, prepare_split
from hf_distill.models.loading import load_model
from hf_distill.models.normalization import input_spec
from tests.conftest import JPEG_TEACHER_DIR, SHARED, STUDENT_INIT_DIR, TEACHER_DIR


def _accuracy(model, subset_test) -> float:
    spec = input_spec(model)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.image_size == 32  # what the publisher trained with
    split = prepare_split(subset_test, spec.mean, spec.std, 32, train=False)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(split.dataset), 250):
            b = collate([split.dataset[j] for j in range(i, min(i + 250, len(split.dataset)))])
            correct += (model(b["pixel_values"]).logits.argmax(1) == b["labels"]).sum().item()
    assert model.config.id2label[0] == "airplane" and model.config.num_labels == 10
    return correct / len(split.dataset)


# Measured on the 1000 committed JPEG test images; an untrained or mis-converted network scores ~10%.
@pytest.mark.parametrize(
    "folder, low, high",
    [
        (TEACHER_DIR, 0.80, 0.88),  # 83.7% (83.2% on the full JPEG test set, 93.6% on the original PNGs)
        (JPEG_TEACHER_DIR, 0.87, 0.92),  # 89.3%: the same network fine-tuned 2 epochs on the JPEG train split
        (STUDENT_INIT_DIR, 0.78, 0.86),  # 82.0% (resnet20; 91.8% on the original PNGs)
    ],
    ids=["resnet56", "resnet56-jpeg", "resnet20"],
)
def test_committed_model_accuracy_on_the_committed_test_subset(folder, low, high, subset_test):
    acc = _accuracy(load_model(str(folder), role="teacher").eval(), subset_test)
    assert low <= acc <= high, acc


#: the publisher's original files (akamaster/pytorch_resnet_cifar10 release), kept beside the repository, not in it
ORIGINALS = SHARED / "teachers" / "cifar10-resnet-akamaster"


@pytest.mark.skipif(
    not ORIGINALS.is_dir(),
    reason=f"compares the committed weights with the publisher's original .th files, which are not committed; runs "
    f"where they are in {ORIGINALS} (the maintainers' machines). The conversion itself is tested in any clone by "
    "tests/models/test_convert_akamaster.py",
)
def test_committed_weights_equal_a_fresh_conversion():
    from hf_distill.models.convert_akamaster import load_akamaster_checkpoint

    src = ORIGINALS
    for file, folder in (("resnet56-4bfd9763.th", TEACHER_DIR), ("resnet20-12fca82f.th", STUDENT_INIT_DIR)):
        fresh = load_akamaster_checkpoint(src / file)
        committed = safetensors.torch.load_file(str(folder / "model.safetensors"))
        for k, v in fresh.state_dict().items():
            assert torch.equal(committed[k], v), (file, k)
