"""Image-classification data for distillation: loading, column detection, transforms, row index, collator.

A batch leaving the collator is ``{"pixel_values": (B,3,H,W) float, "labels": (B,) long, "index": (B,) long}``;
``index`` is the row of the sample in the (sub-sampled) training set, which memory-bank methods (CRD) need.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from torchvision import transforms as T

IMAGE_COLUMNS = ("img", "image", "images", "picture")
LABEL_COLUMNS = ("label", "fine_label", "labels", "target")


class DataError(ValueError):
    """A dataset that cannot be used as it is; the message says how to fix it."""


def load_image_dataset(name_or_path: str, split: str | None = None, **kwargs: Any) -> datasets.Dataset:
    """Load one split of an image-classification dataset.

    Args:
        name_or_path: a local dataset folder (``datasets`` layout or parquet files with a README config), a
            ``.parquet``/``.arrow`` file, a folder written by ``save_to_disk``, or a Hub dataset id
            (``uoft-cs/cifar100``).
        split: the split to return (e.g. ``"train"``, ``"test"``, ``"train[:5000]"``).

    Returns:
        The ``datasets.Dataset`` of that split.
    """
    if os.path.isfile(name_or_path):
        ext = os.path.splitext(name_or_path)[1].lstrip(".")
        builder = {"parquet": "parquet", "arrow": "arrow", "csv": "csv", "json": "json", "jsonl": "json"}.get(
            ext
        )
        if builder is None:
            raise DataError(
                f"Cannot read dataset file {name_or_path!r}: use .parquet, .arrow, .csv or .json files."
            )
        return datasets.load_dataset(
            builder, data_files={"train": name_or_path}, split=split or "train", **kwargs
        )
    if os.path.isdir(name_or_path) and os.path.exists(os.path.join(name_or_path, "dataset_info.json")):
        ds = datasets.load_from_disk(name_or_path)
        return ds[split] if isinstance(ds, datasets.DatasetDict) and split else ds
    try:
        return datasets.load_dataset(name_or_path, split=split, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise DataError(
            f"Could not load dataset {name_or_path!r} (split {split!r}): {e}. Pass an existing local folder or "
            "parquet file, or a Hub dataset id on a machine with internet access."
        ) from e


def resolve_columns(
    ds: datasets.Dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """Find (or check) the image and label columns.

    Detects ``img``/``image`` and ``label``/``fine_label`` when not given.

    Raises:
        DataError: no label column, a column that does not exist, or an image column that is not images.
    """
    cols = list(ds.column_names)
    feats = ds.features
    if label_column is None:
        label_column = next((c for c in LABEL_COLUMNS if c in cols), None)
        if label_column is None:
            raise DataError(
                f"The dataset has no label column (columns: {', '.join(cols)}). Distillation needs class labels: "
                f"name the column with --label_column, or use a dataset with one of {', '.join(LABEL_COLUMNS)}."
            )
    elif label_column not in cols:
        raise DataError(f"Label column {label_column!r} is not in the dataset (columns: {', '.join(cols)}).")
    lf = feats[label_column]
    if not (isinstance(lf, datasets.ClassLabel) or (isinstance(lf, datasets.Value) and "int" in lf.dtype)):
        raise DataError(
            f"Label column {label_column!r} has type {lf}, not class ids. Use a ClassLabel or integer column "
            "(cast with ds.class_encode_column(...)), or name another one with --label_column."
        )
    if image_column is None:
        image_column = next((c for c in cols if isinstance(feats[c], datasets.Image)), None)
        if image_column is None:
            image_column = next((c for c in IMAGE_COLUMNS if c in cols), None)
        if image_column is None:
            raise DataError(
                f"The dataset has no image column (columns: {', '.join(cols)}). Name it with --image_column."
            )
    elif image_column not in cols:
        raise DataError(f"Image column {image_column!r} is not in the dataset (columns: {', '.join(cols)}).")
    if not isinstance(feats[image_column], datasets.Image):
        raise DataError(
            f"Column {image_column!r} is not an image column (its type is {feats[image_column]}). Pass "
            "--image_column with a column of images (datasets.Image), or cast it with "
            f"ds.cast_column({image_column!r}, datasets.Image())."
        )
    return image_column, label_column


def class_names(ds: datasets.Dataset, label_column: str) -> list[str]:
    """Names of the classes (``ClassLabel`` names, or the ids as strings)."""
    f = ds.features[label_column]
    if isinstance(f, datasets.ClassLabel):
        return list(f.names)
    labels = ds[label_column]
    return [str(i) for i in range(int(max(labels)) + 1)]


def label_tensor(ds: datasets.Dataset, label_column: str) -> torch.Tensor:
    """The label of every row, in row order (only the label column is read)."""
    return torch.as_tensor(ds.with_format(None)[label_column], dtype=torch.long)


def build_transform(
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    train: bool,
    source_size: int | None = None,
) -> T.Compose:
    """The standard CIFAR pipeline: random crop with padding (size/8, i.e. 4 at 32 px) and horizontal flip for
    training; resize only when the model's input size differs from the images'; then the model's normalization."""
    steps: list[Any] = []
    if source_size != image_size:
        steps.append(T.Resize((image_size, image_size), antialias=True))
    if train:
        steps += [T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    return T.Compose(steps)


@dataclass
class PreparedSplit:
    """A split ready for the trainer plus what the trainer and the losses need to know about it."""

    dataset: datasets.Dataset
    image_column: str
    label_column: str
    class_names: list[str]
    labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prepare_split(
    ds: datasets.Dataset,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    train: bool,
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
) -> PreparedSplit:
    """Select, index and transform one split.

    Args:
        ds: the raw split.
        mean, std, image_size: the student's normalization and input size.
        train: apply the training augmentation.
        image_column, label_column: override the detected columns.
        max_samples: keep only the first rows (a deterministic subset).

    Returns:
        A :class:`PreparedSplit` whose dataset yields ``pixel_values``, ``labels`` and ``index``.
    """
    image_column, label_column = resolve_columns(ds, image_column, label_column)
    if max_samples is not None and max_samples < len(ds):
        ds = ds.select(range(max_samples))
    names = class_names(ds, label_column)
    labels = label_tensor(ds, label_column)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(
            f"Labels in {label_column!r} must lie in [0, {len(names)}), found {labels.min()}..{labels.max()}."
        )
    keep = {image_column, label_column}
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    if "index" in ds.column_names:
        ds = ds.remove_columns("index")
    ds = ds.add_column("index", list(range(len(ds))))
    source = _source_size(ds, image_column)
    tf = build_transform(mean, std, image_size, train, source_size=source)

    def apply(batch: dict[str, list[Any]]) -> dict[str, Any]:
        return {
            "pixel_values": [tf(im.convert("RGB")) for im in batch[image_column]],
            "labels": batch[label_column],
            "index": batch["index"],
        }

    return PreparedSplit(ds.with_transform(apply), image_column, label_column, names, labels)


def _source_size(ds: datasets.Dataset, image_column: str) -> int | None:
    if len(ds) == 0:
        return None
    w, h = ds[0][image_column].size
    return w if w == h else None


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack a list of transformed rows into a batch."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
        "index": torch.tensor([int(e["index"]) for e in examples], dtype=torch.long),
    }
