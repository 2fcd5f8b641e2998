"""Teacher, student and dataset share one label set: counts and names are compared in one place, the same names in
another order are remapped, different names are one clear line."""

import copy

import datasets
import pytest
import torch

from hf_distill import DistillationTrainer
from hf_distill.data.datasets import prepare_split
from hf_distill.data.labels import align_label_spaces
from hf_distill.models.modeling_cifar import create_cifar_model
from tests.conftest import SUBSET
from tests.helpers import CIFAR_SPEC, trainer_args

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PERM = [3, 0, 9, 1, 2, 8, 4, 7, 6, 5]  # head row j of the permuted teacher is class NAMES[PERM[j]]


def _zoo(names=None, seed=0):
    torch.manual_seed(seed)
    return create_cifar_model(
        "resnet8", num_labels=10, id2label=None if names is None else dict(enumerate(names))
    )


def _permuted(teacher):
    """The same network with its head rows (and names) in PERM order: the same teacher, classes listed otherwise."""
    other = copy.deepcopy(teacher)
    fc = other.model.get_classifier()
    with torch.no_grad():
        fc.weight.copy_(fc.weight[PERM])
        fc.bias.copy_(fc.bias[PERM])
    other.config.id2label = {j: NAMES[i] for j, i in enumerate(PERM)}
    other.config.label2id = {v: k for k, v in other.config.id2label.items()}
    return other


def test_same_names_in_another_order_give_the_order_that_undoes_it():
    order = align_label_spaces(_zoo(NAMES), _permuted(_zoo(NAMES)))
    x = torch.randn(2, 3, 32, 32)
    a = _zoo(NAMES, seed=1).eval()
    b = _permuted(a).eval()
    assert torch.allclose(b(x).logits[:, order], a(x).logits, atol=1e-6)
    assert align_label_spaces(_zoo(NAMES), _zoo(NAMES)) is None  # same order: nothing to do


def test_generic_names_count_as_no_names():
    generic = _zoo([f"LABEL_{i}" for i in range(10)])
    assert align_label_spaces(_zoo(NAMES), generic) is None
    assert align_label_spaces(_zoo([str(i) for i in range(10)]), _permuted(_zoo(NAMES))) is None


def test_different_names_are_one_line_listing_them():
    renamed = _zoo(["plane"] + NAMES[1:])
    with pytest.raises(ValueError, match=r"the teacher has airplane where the student has plane\. ") as e:
        align_label_spaces(renamed, _zoo(NAMES))
    assert "\n" not in str(e.value)


def test_a_renamed_class_folder_is_refused_against_the_dataset():
    raw = datasets.load_dataset(str(SUBSET), split="test").select(range(20))
    raw = raw.cast_column("label", datasets.ClassLabel(names=NAMES[:5] + ["doggo"] + NAMES[6:]))
    with pytest.raises(ValueError, match="the teacher has dog where the dataset has doggo"):
        align_label_spaces(_zoo(), _zoo(NAMES), raw)  # the student has no names of its own
    with pytest.raises(ValueError, match="student's classes are not the dataset's"):
        align_label_spaces(_zoo(NAMES), None, raw)


def test_an_empty_class_name_is_the_dataset_s_fault_in_one_line():
    raw = datasets.load_dataset(str(SUBSET), split="test").select(range(20))
    raw = raw.cast_column("label", datasets.ClassLabel(names=NAMES[:3] + [""] + NAMES[4:]))
    for student, teacher in ((_zoo(), _zoo(NAMES)), (_zoo(NAMES[:3] + [""] + NAMES[4:]), None)):
        with pytest.raises(ValueError) as e:
            align_label_spaces(student, teacher, raw)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("The dataset names class 3 with an empty string")
        assert "student" not in msg and "teacher" not in msg


def test_a_reordered_teacher_can_be_refused():
    with pytest.raises(ValueError, match="another order"):
        align_label_spaces(_zoo(NAMES), _permuted(_zoo(NAMES)), remap_teacher=False)


def test_class_counts_are_checked_once_for_teacher_student_and_dataset():
    with pytest.raises(ValueError, match="teacher predicts 100 classes but the student 10"):
        align_label_spaces(_zoo(), create_cifar_model("resnet8", num_labels=100))
    raw = datasets.load_dataset(str(SUBSET), split="test").select(range(20))
    with pytest.raises(ValueError, match="dataset has 10 classes but the student predicts 100"):
        align_label_spaces(create_cifar_model("resnet8", num_labels=100), None, raw)


@pytest.fixture(scope="module")
def tiny(subset_train, subset_test):
    tr = prepare_split(subset_train, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=32)
    te = prepare_split(subset_test, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, False, max_samples=32)
    assert tr.class_names == NAMES
    return tr, te


def _distill(tmp_path, tiny, teacher):
    tr, te = tiny
    t = DistillationTrainer(
        model=_zoo(NAMES, seed=0),
        teacher=teacher,
        objective="kd",
        args=trainer_args(tmp_path, max_steps=2, per_device_eval_batch_size=32),
        train_dataset=tr.dataset,
        eval_dataset=te.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
    )
    t.train()
    losses = [h["loss_kd"] for h in t.state.log_history if "loss_kd" in h]
    return t.model.student.state_dict(), losses, t.evaluate()["eval_teacher_accuracy"]


def test_a_teacher_with_permuted_head_rows_trains_the_same_student(tmp_path, tiny):
    teacher = _zoo(NAMES, seed=5)
    ref_state, ref_losses, ref_acc = _distill(tmp_path / "a", tiny, teacher)
    state, losses, acc = _distill(tmp_path / "b", tiny, _permuted(teacher))
    assert losses == pytest.approx(ref_losses, abs=1e-5) and acc == ref_acc
    for k, v in ref_state.items():
        assert torch.allclose(state[k].float(), v.float(), atol=1e-5), k
    # Without names the permuted head cannot be remapped: the student learns from misaligned classes.
    unnamed = _permuted(teacher)
    unnamed.config.id2label = {i: f"LABEL_{i}" for i in range(10)}
    _, other_losses, _ = _distill(tmp_path / "c", tiny, unnamed)
    assert other_losses[0] != pytest.approx(ref_losses[0], abs=1e-3)
