"""A Trainer user's dataset without a transform: one line naming the missing keys and the fix, and the fix works."""

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import TrainingArguments

from hf_distill import DistillationTrainer
from hf_distill.data.datasets import DataError, collate, prepare_split
from hf_distill.data.transforms import model_pipeline
from tests.helpers import timm_model


@pytest.fixture(scope="module")
def raw():
    """Images of several sizes in an ``image`` column, classes in ``label``: what load_dataset gives."""
    rng = np.random.default_rng(0)
    images = [
        PILImage.fromarray(rng.integers(0, 255, (30 + i % 5, 36, 3), dtype=np.uint8)) for i in range(24)
    ]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b", "c"])})
    return Dataset.from_dict({"image": images, "label": [i % 3 for i in range(24)]}, features=features)


def _trainer(tmp_path, train, eval_dataset=None, **kw):
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, use_cpu=True, report_to="none",
        save_strategy="no",
    )  # fmt: skip
    return DistillationTrainer(
        model=timm_model(num_labels=3, seed=0), teacher=timm_model(num_labels=3, seed=1), objective="kd",
        args=args, train_dataset=train, eval_dataset=eval_dataset, **kw,
    )  # fmt: skip


def _prepared(ds, train: bool):
    p = model_pipeline(timm_model(num_labels=3, seed=0), image_size=32)
    return prepare_split(
        ds, p.mean, p.std, p.image_size, train, transform=p.train if train else p.eval
    ).dataset


def test_a_raw_training_set_is_one_line_with_the_fix(tmp_path, raw):
    with pytest.raises(DataError) as e:
        _trainer(tmp_path, raw)
    msg = str(e.value)
    assert "\n" not in msg
    assert (
        "The training dataset's rows have no 'pixel_values' or 'labels' (its first row has image, label)"
        in msg
    )
    assert "model_pipeline(student)" in msg and "with_transform" in msg


def test_a_raw_evaluation_set_is_named_before_training(tmp_path, raw):
    train = _prepared(raw, True)
    with pytest.raises(DataError, match=r"^The evaluation dataset's rows have no 'pixel_values' or 'labels'"):
        _trainer(tmp_path, train, eval_dataset=raw)
    with pytest.raises(DataError, match=r"^The evaluation \(other\) dataset's rows"):
        _trainer(tmp_path, train, eval_dataset={"test": _prepared(raw, False), "other": raw})


def test_a_transform_returning_label_instead_of_labels_is_named(tmp_path, raw):
    wrong = raw.with_transform(
        lambda rows: {"pixel_values": [torch.zeros(3, 32, 32) for _ in rows["image"]], "label": rows["label"]}
    )
    with pytest.raises(DataError, match=r"have no 'labels' \(its first row has label, pixel_values\)"):
        _trainer(tmp_path, wrong)


def test_a_collator_that_drops_the_labels_is_named(tmp_path, raw):
    def no_labels(rows):
        return {"pixel_values": collate(rows)["pixel_values"]}

    with pytest.raises(DataError, match=r"^The training dataset's collator's batches have no 'labels'"):
        _trainer(tmp_path, _prepared(raw, True), data_collator=no_labels)


class _TupleRows(torch.utils.data.Dataset):
    """A torch dataset of ``(image, label)`` tuples, which only the user's collator turns into a batch."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.zeros(3, 32, 32), i % 3


def _tuples_to_batch(rows) -> dict:
    return {"pixel_values": torch.stack([r[0] for r in rows]), "labels": torch.tensor([r[1] for r in rows])}


@pytest.mark.parametrize("as_feature", [False, True])
def test_a_collator_that_makes_the_batch_from_tuple_rows_is_accepted(tmp_path, as_feature):
    from transformers import BatchFeature

    collator = (lambda rows: BatchFeature(_tuples_to_batch(rows))) if as_feature else _tuples_to_batch
    _trainer(tmp_path, _TupleRows(), data_collator=collator).train()


def test_the_fix_the_message_names_trains(tmp_path, raw):
    trainer = _trainer(tmp_path, _prepared(raw, True), eval_dataset=_prepared(raw, False))
    trainer.train()
    assert "eval_accuracy" in trainer.evaluate()


def _tensor_rows(size: int, classes: int):
    return Dataset.from_dict(
        {
            "pixel_values": [np.zeros((3, size, size), np.float32)] * 8,
            "labels": [i % classes for i in range(8)],
        }
    ).with_format("torch")


def test_labels_beyond_the_students_classes_are_one_line_at_setup(tmp_path):
    # plain int labels (no ClassLabel to compare): before, cross-entropy stopped the first batch with "Target 3 is out
    # of bounds" from inside the loss
    with pytest.raises(ValueError, match=r"^The training labels lie in 0\.\.4 but the student predicts 3 classes .*"
                       r"num_labels=5"):  # fmt: skip
        _trainer(tmp_path, _tensor_rows(32, 5))


def test_a_transformers_vit_at_a_size_it_refuses_is_one_line_at_setup(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    from hf_distill.training.distillation_model import InputShapeError

    vit = ViTForImageClassification(
        ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, num_labels=3)
    )  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none")
    with pytest.raises(
        InputShapeError, match=r"^The student \(ViTForImageClassification\) cannot run on 30x30 px"
    ):
        DistillationTrainer(
            model=vit, teacher=timm_model(num_labels=3), args=args, train_dataset=_tensor_rows(30, 3)
        )


@pytest.mark.parametrize(
    "kw", [{"teacher": "path/to/teacher"}, {"teacher": ["a", "b"]}, {"model": "resnet18"}]
)
def test_a_network_given_by_name_is_one_line_naming_the_loader(tmp_path, kw):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none")
    nets = {"model": timm_model(num_labels=3), "teacher": timm_model(num_labels=3), **kw}
    with pytest.raises(ValueError, match=r"is a name: DistillationTrainer takes the (student|teacher) as a network\. "
                       r"Load it first, e\.g\. hf_distill\.models\.loading\.load_model\("):  # fmt: skip
        DistillationTrainer(**nets, args=args, train_dataset=_tensor_rows(32, 3))
