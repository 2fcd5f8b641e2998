"""The new dataset of a transfer run: its two splits, an optional class subset, and images for the model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from ..data.datasets import LABEL_COLUMNS, PreparedSplit, class_names, load_image_dataset, prepare_split
from ..models.normalization import InputSpec
from .result import TransferError


@dataclass
class TransferData:
    """The two splits of the new dataset, and how they are named in results."""

    train: datasets.Dataset
    test: datasets.Dataset
    image_column: str | None
    label_column: str
    class_names: list[str]
    dataset_id: str
    name: str
    test_split: str
    classes: list[int] | None = None

    @property
    def config_label(self) -> str | None:
        """How the card's ``dataset.config`` names a class subset (``classes=5,6,7``), None for all classes."""
        return f"classes={','.join(map(str, self.classes))}" if self.classes else None


def parse_classes(text: str | Sequence[int] | None) -> list[int] | None:
    """``"5,6,7"`` -> ``[5, 6, 7]`` (None or empty: all classes)."""
    if text is None or text == "" or text == []:
        return None
    if isinstance(text, str):
        try:
            return [int(c) for c in text.split(",") if c.strip()]
        except ValueError as e:
            raise TransferError(
                f"--classes takes class ids separated by commas (e.g. 5,6,7), not {text!r}."
            ) from e
    return [int(c) for c in text]


def label_column_of(ds: datasets.Dataset, label_column: str | None, where: str) -> str:
    """The label column of a split (given or detected), or a one-line error for a split without labels.

    Args:
        ds: the split.
        label_column: the column named by the user, or None to detect it.
        where: the dataset (and split) for the message.
    """
    if label_column is None:
        label_column = next((c for c in LABEL_COLUMNS if c in ds.column_names), None)
    if label_column is None or label_column not in ds.column_names:
        which = f"column {label_column!r}" if label_column else "column"
        raise TransferError(
            f"Dataset {where} has no label {which} (columns: {', '.join(ds.column_names)}): transfer trains a "
            "classifier on class labels. Name the label column with --label_column, or use a labelled dataset "
            f"(a column named {' / '.join(LABEL_COLUMNS)})."
        )
    return label_column


def select_classes(
    ds: datasets.Dataset, label_column: str, classes: Sequence[int], relabel: bool = True
) -> datasets.Dataset:
    """Keep the rows of ``classes`` only.

    Args:
        ds: a split with class ids in ``label_column``.
        label_column: the label column.
        classes: the class ids to keep.
        relabel: renumber them ``0..len(classes)-1`` in the given order, with their names as a ``ClassLabel``
            (what a classifier of the subset needs); ``False`` keeps the ids and the full label set (what a teacher
            trained on all classes needs when distilling on the subset).

    Returns:
        The filtered split.
    """
    names = class_names(ds, label_column)
    bad = [c for c in classes if not 0 <= c < len(names)]
    if bad or len(set(classes)) != len(classes):
        raise TransferError(
            f"--classes {','.join(map(str, classes))} must be distinct class ids in [0, {len(names)}) "
            f"({', '.join(f'{i}={n}' for i, n in enumerate(names[:12]))}{', ...' if len(names) > 12 else ''})."
        )
    keep = set(classes)
    ds = ds.filter(lambda y: y in keep, input_columns=label_column)
    if not relabel:
        return ds
    new_id = {c: i for i, c in enumerate(classes)}
    ds = ds.map(lambda y: {label_column: new_id[y]}, input_columns=label_column)
    return ds.cast_column(label_column, datasets.ClassLabel(names=[names[c] for c in classes]))


def write_class_subset(
    dataset: str,
    classes: Sequence[int],
    out_dir: str,
    splits: Sequence[str] = ("train", "test"),
    label_column: str | None = None,
) -> str:
    """Write the rows of some classes of a dataset as ``<out_dir>/<split>.parquet`` (a folder ``--dataset`` reads).

    The label ids and the full ``ClassLabel`` are kept, so a teacher trained on every class still fits: this is how
    a student is distilled on some classes (``recipes/distill.py --dataset <out_dir>``) and probed on the others.

    Returns:
        ``out_dir``.
    """
    os.makedirs(out_dir, exist_ok=True)
    for split in splits:
        ds = load_image_dataset(dataset, split)
        subset = select_classes(
            ds, label_column_of(ds, label_column, repr(dataset)), list(classes), relabel=False
        )
        subset.to_parquet(os.path.join(out_dir, f"{split}.parquet"))
    return out_dir


def _load_split(dataset: str, split: str, option: str) -> datasets.Dataset:
    try:
        return load_image_dataset(dataset, split)
    except ValueError as e:
        if "Unknown split" not in str(e):
            raise
        raise TransferError(
            f"Dataset {dataset!r} has no split {split!r} ({str(e).rstrip('.')}). Name the split with "
            f"{option}; a dataset with a single split can be divided, e.g. --train_split 'train[:80%]' "
            "--test_split 'train[80%:]'."
        ) from None


def load_transfer_data(
    dataset: str,
    train_split: str = "train",
    test_split: str = "test",
    classes: Sequence[int] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> TransferData:
    """Load and check the two splits of the new dataset (optionally only some classes, renumbered).

    Raises:
        TransferError: a missing split, no label column, bad class ids, or the same split twice.
    """
    if train_split == test_split:
        raise TransferError(
            f"--train_split and --test_split are both {train_split!r}: the probe must be tested on held-out images "
            "(e.g. --train_split 'train[:80%]' --test_split 'train[80%:]')."
        )
    train = _load_split(dataset, train_split, "--train_split")
    test = _load_split(dataset, test_split, "--test_split")
    label_column = label_column_of(train, label_column, f"{dataset!r} (split {train_split!r})")
    label_column_of(test, label_column, f"{dataset!r} (split {test_split!r})")
    dataset_id = os.path.basename(os.path.normpath(dataset)) if os.path.exists(dataset) else dataset
    name = dataset_id
    names = class_names(train, label_column)
    if classes:
        train = select_classes(train, label_column, classes)
        test = select_classes(test, label_column, classes)
        name = f"{name}, classes {','.join(map(str, classes))} ({', '.join(names[c] for c in classes)})"
        names = [names[c] for c in classes]
    return TransferData(
        train,
        test,
        image_column,
        label_column,
        names,
        dataset_id,
        name,
        test_split,
        list(classes or []) or None,
    )


def prepare(
    data: TransferData,
    split: datasets.Dataset,
    spec: InputSpec,
    train: bool,
    max_samples: int | None = None,
    seed: int = 0,
) -> PreparedSplit:
    """One split transformed for the model (its normalization and input size; augmentation when ``train``)."""
    return prepare_split(
        split,
        spec.mean,
        spec.std,
        spec.image_size,
        train,
        data.image_column,
        data.label_column,
        max_samples,
        seed,
    )
