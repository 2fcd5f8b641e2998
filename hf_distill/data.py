"""Image-classification data for distillation: loading, column detection, transforms, row index, collator.

A batch leaving the collator is ``{"pixel_values": (B,3,H,W) float, "labels": (B,) long, "index": (B,) long}``;
``index`` is the row of the sample in the (sub-sampled) training set, which memory-bank methods (CRD) need.
Training augmentation depends only on (seed, epoch, row), never on the global RNG, so resumed and multi-process runs
see exactly the images an uninterrupted single-process run sees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import PIL.Image
import torch
import torchvision.transforms.functional as TF

IMAGE_COLUMNS = ("img", "image", "images", "picture")
#: the label column names detected when none is given, in order of preference
LABEL_COLUMNS = ("label", "fine_label", "labels", "target")


def find_label_column(column_names: Sequence[str]) -> str | None:
    """The first of :data:`LABEL_COLUMNS` among ``column_names``, or None."""
    return next((c for c in LABEL_COLUMNS if c in column_names), None)


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

    Detects the first of :data:`IMAGE_COLUMNS` and of :data:`LABEL_COLUMNS` when not given.

    Raises:
        DataError: no label column, a column that does not exist, or an image column that is not images.
    """
    cols = list(ds.column_names)
    feats = ds.features
    if label_column is None:
        label_column = find_label_column(cols)
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


def _mix(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, row): augmentation independent of the global RNG."""
    h = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    h ^= h >> 31
    return h & (2**63 - 1)


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Rows of an image-classification ``datasets.Dataset`` as ``{pixel_values, labels, index}``.

    Training augmentation is the standard CIFAR one (random crop with zero padding of size/8 — 4 px at 32 — and a
    horizontal flip), drawn from a generator seeded by (seed, epoch, row index) instead of the global RNG. So a
    sample's augmentation is the same whatever the number of processes or dataloader workers, and a run resumed in
    the middle of an epoch sees exactly the images the uninterrupted run saw. The trainer advances the epoch with
    :meth:`set_epoch`.

    Args:
        ds: the raw split (image and label columns).
        image_column, label_column: the columns to read.
        mean, std: normalization of the model.
        image_size: model input size; images of another size are resized first.
        train: apply the augmentation.
        seed: seed of the augmentation.
        class_names: the class names (``ClassLabel`` names).
    """

    def __init__(
        self,
        ds: datasets.Dataset,
        image_column: str,
        label_column: str,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        train: bool,
        seed: int = 0,
        class_names: list[str] | None = None,
    ) -> None:
        self.ds = ds.select_columns([image_column, label_column])
        self.image_column, self.label_column = image_column, label_column
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.image_size = int(image_size)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self.padding = max(1, self.image_size // 8)
        self.labels = label_tensor(ds, label_column)
        self.class_names = class_names or [
            str(i) for i in range(int(self.labels.max()) + 1 if len(self.labels) else 0)
        ]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def info(self) -> datasets.DatasetInfo:
        """The underlying split's ``DatasetInfo`` (name, config; used by model cards)."""
        return self.ds.info

    @property
    def split(self):
        return self.ds.split

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ds)

    def _pixels(self, image, index: int) -> torch.Tensor:
        image = image.convert("RGB")
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), resample=PIL.Image.BILINEAR)
        x = TF.pil_to_tensor(image).float().div_(255)
        if self.train:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, index))
            dx, dy, flip = torch.randint(0, 2 * self.padding + 1, (3,), generator=g).tolist()
            p = self.padding
            x = torch.nn.functional.pad(x, (p, p, p, p))[
                :, dy : dy + self.image_size, dx : dx + self.image_size
            ]
            if flip % 2:
                x = x.flip(-1)
        return (x - self.mean) / self.std

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.ds[int(index)]
        return {
            "pixel_values": self._pixels(row[self.image_column], int(index)),
            "labels": int(row[self.label_column]),
            "index": int(index),
        }

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # One Arrow read for the whole batch instead of one per row.
        idx = [int(i) for i in indices]
        rows = self.ds[idx]
        return [
            {"pixel_values": self._pixels(im, i), "labels": int(lb), "index": i}
            for im, lb, i in zip(rows[self.image_column], rows[self.label_column], idx)
        ]


@dataclass
class PreparedSplit:
    """A split ready for the trainer plus what the trainer and the losses need to know about it."""

    dataset: ImageClassificationDataset
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
    seed: int = 0,
) -> PreparedSplit:
    """Select, check and wrap one split.

    Args:
        ds: the raw split.
        mean, std, image_size: the student's normalization and input size.
        train: apply the training augmentation.
        image_column, label_column: override the detected columns.
        max_samples: keep only the first rows (a deterministic subset).
        seed: seed of the augmentation.

    Returns:
        A :class:`PreparedSplit` whose dataset yields ``pixel_values``, ``labels`` and ``index`` (the row).
    """
    image_column, label_column = resolve_columns(ds, image_column, label_column)
    if max_samples is not None and max_samples < len(ds):
        ds = ds.select(range(max_samples))
    names = class_names(ds, label_column)
    wrapped = ImageClassificationDataset(
        ds, image_column, label_column, mean, std, image_size, train, seed, names
    )
    labels = wrapped.labels
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(
            f"Labels in {label_column!r} must lie in [0, {len(names)}), found {labels.min()}..{labels.max()}."
        )
    return PreparedSplit(wrapped, image_column, label_column, names, labels)


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack a list of transformed rows into a batch."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
        "index": torch.tensor([int(e["index"]) for e in examples], dtype=torch.long),
    }
