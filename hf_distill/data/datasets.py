"""Image-classification data for distillation: loading, column detection, the seeded dataset (its transforms live
in :mod:`hf_distill.data.transforms`), row index, collator. The file is longer than 500 lines because loading, split carving, the undecodable-image checks and the seeded dataset all
apply the column conventions defined at its top, kept together so that one reading shows what happens to a row.

A batch leaving the collator is ``{"pixel_values": (B,3,H,W) float, "labels": (B,) long, "index": (B,) long}``;
``index`` is the row of the sample in the (sub-sampled) training set, which memory-bank methods (CRD) need.
Training augmentation depends only on (seed, epoch, row), never on the global RNG, so resumed and multi-process runs
see exactly the images an uninterrupted single-process run sees.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import PIL.Image
import torch

from .transforms import CifarTransform, DataError

IMAGE_COLUMNS = ("img", "image", "images", "picture")
#: the label column names detected when none is given, in order of preference
LABEL_COLUMNS = ("label", "fine_label", "labels", "target")


def find_label_column(column_names: Sequence[str]) -> str | None:
    """The first of :data:`LABEL_COLUMNS` among ``column_names``, or None."""
    return next((c for c in LABEL_COLUMNS if c in column_names), None)


logger = logging.getLogger(__name__)

#: splits of at most this many rows have every image decoded once before training (a few seconds for CIFAR-10);
#: larger ones replace an undecodable image, met in a batch, by the next decodable row and count it
UPFRONT_IMAGE_CHECK_ROWS = 20_000
#: what decoding a corrupt or truncated image raises (PIL: OSError, UnidentifiedImageError; some formats SyntaxError)
IMAGE_DECODE_ERRORS = (OSError, SyntaxError, PIL.Image.DecompressionBombError)


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


def split_names(name_or_path: str) -> list[str] | None:
    """The splits a dataset offers, or None when they cannot be listed without loading it (e.g. offline Hub ids).

    A single data file and a folder of class folders (or of parquet files without a split layout) offer only
    ``train``.
    """
    if os.path.isfile(name_or_path):
        return ["train"]
    if os.path.isdir(name_or_path) and os.path.exists(os.path.join(name_or_path, "dataset_info.json")):
        return ["train"]  # load_from_disk of a single Dataset
    if os.path.isdir(name_or_path) and os.path.exists(os.path.join(name_or_path, "dataset_dict.json")):
        with open(os.path.join(name_or_path, "dataset_dict.json"), encoding="utf-8") as f:
            import json

            return list(json.load(f).get("splits", []))
    try:
        return list(datasets.get_dataset_split_names(name_or_path))
    except Exception:  # noqa: BLE001 - listing is best effort; loading the split gives the real error
        return None


def stratified_holdout(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split row indices into (kept, held out), holding out ``fraction`` of every class, seeded.

    Every class with at least two rows gives at least one row to the held-out part and keeps at least one; a class
    with a single row stays in the kept part. Both lists are sorted, so the kept rows stay in dataset order.

    Raises:
        ValueError: ``fraction`` outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--validation_split_size must lie in (0, 1), got {fraction}.")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    g = torch.Generator().manual_seed(int(seed))
    held: list[int] = []
    for y in sorted(by_class):
        rows = by_class[y]
        if len(rows) < 2:
            continue
        n = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        order = torch.randperm(len(rows), generator=g)[:n].tolist()
        held.extend(rows[j] for j in order)
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


@dataclass
class CarvedSplit:
    """How an evaluation split was carved out of the training split (recorded in ``all_results.json``)."""

    source: str
    fraction: float
    seed: int
    num_rows: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "carved_from": self.source,
            "size": self.fraction,
            "seed": self.seed,
            "num_rows": self.num_rows,
        }


def load_train_and_eval(
    name_or_path: str,
    train_split: str,
    eval_split: str | None,
    label_column: str | None,
    validation_split_size: float,
    seed: int,
) -> tuple[datasets.Dataset, datasets.Dataset | None, CarvedSplit | None]:
    """Load the training split and the evaluation split; carve the latter out of the former when it is missing.

    A dataset with a single split (a folder of class folders, one parquet file) has no ``test`` split: then a
    seeded, class-stratified ``validation_split_size`` fraction of the training rows becomes the evaluation set and
    the training set keeps the rest. ``eval_split`` empty (or ``validation_split_size`` 0 with the split missing)
    means no evaluation.

    Returns:
        (train, eval or None, how the eval split was carved or None).
    """
    raw_train = load_image_dataset(name_or_path, train_split)
    if not eval_split:
        return raw_train, None, None
    names = split_names(name_or_path)
    if names is None or eval_split.split("[")[0] in names:
        return raw_train, load_image_dataset(name_or_path, eval_split), None
    if validation_split_size <= 0:
        logger.warning(
            "The dataset has no %r split (splits: %s) and --validation_split_size is 0: nothing is evaluated.",
            eval_split,
            ", ".join(names),
        )
        return raw_train, None, None
    _, lab_col = resolve_columns(raw_train, None, label_column)
    kept, held = stratified_holdout(label_tensor(raw_train, lab_col).tolist(), validation_split_size, seed)
    if not held:
        raise DataError(
            f"The dataset has no {eval_split!r} split and too few rows per class to carve one: give --eval_split "
            "an existing split, or --eval_split '' to evaluate nothing."
        )
    logger.warning(
        "The dataset has no %r split (splits: %s): evaluating on %d training rows held out class by class "
        "(--validation_split_size %g, seed %d); training on the other %d.",
        eval_split,
        ", ".join(names),
        len(held),
        validation_split_size,
        seed,
        len(kept),
    )
    carved = CarvedSplit(train_split, float(validation_split_size), int(seed), len(held))
    return raw_train.select(kept), raw_train.select(held), carved


def undecodable_rows(ds: datasets.Dataset, image_column: str) -> list[int]:
    """Rows whose image cannot be decoded (truncated or corrupt files), read from the raw bytes."""
    raw = ds.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    bad = []
    for i, cell in enumerate(raw[image_column]):
        if not _decodes(cell):
            bad.append(i)
    return bad


def _decodes(cell: dict[str, Any] | None) -> bool:
    if cell is None:
        return False
    try:
        src = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell.get("path")
        with PIL.Image.open(src) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure means the image is unusable
        return False


def drop_undecodable(ds: datasets.Dataset, image_column: str, strict: bool, what: str) -> datasets.Dataset:
    """Decode every image of a small split once; drop the rows that fail (or refuse them with ``strict``).

    Raises:
        DataError: with ``strict``, naming the first undecodable rows.
    """
    bad = undecodable_rows(ds, image_column)
    if not bad:
        return ds
    rows = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
    if strict:
        raise DataError(
            f"{len(bad)} image(s) of the {what} split cannot be decoded (rows {rows}): repair or remove them, or "
            "drop --strict_images to skip them."
        )
    logger.warning("Skipping %d undecodable image(s) of the %s split (rows %s).", len(bad), what, rows)
    bad_set = set(bad)
    return ds.select([i for i in range(len(ds)) if i not in bad_set])


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


def row_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, row): augmentation independent of the global RNG (a streamed
    row's ``index`` is its identity, :func:`hf_distill.data.streaming.row_identity`)."""
    h = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    h ^= h >> 31
    return h & (2**63 - 1)


_mix = row_seed  # its earlier private name, still imported by tests/data/test_transforms.py


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Rows of an image-classification ``datasets.Dataset`` as ``{pixel_values, labels, index}``.

    Every image goes through ``transform`` (:mod:`hf_distill.data.transforms`; by default the CIFAR one: random crop
    with zero padding of size/8 — 4 px at 32 — and a horizontal flip), called with a seed that depends only on
    (seed, epoch, row index), never on the global RNG. So a sample's augmentation is the same whatever the number of
    processes or dataloader workers, and a run resumed in the middle of an epoch sees exactly the images the
    uninterrupted run saw. The trainer advances the epoch with :meth:`set_epoch`.

    Args:
        ds: the raw split (image and label columns).
        image_column, label_column: the columns to read.
        mean, std: normalization of the model.
        image_size: model input size; images of another size are resized first.
        train: apply the augmentation.
        seed: seed of the augmentation.
        class_names: the class names (``ClassLabel`` names).
        strict_images: fail on an image that cannot be decoded instead of replacing it by the next decodable row
            (counted in :attr:`num_replaced` and logged).
        transform: ``transform(rgb_image, seed_or_None) -> (3, image_size, image_size)`` with a ``description``
            (see :mod:`hf_distill.data.transforms`); default: the CIFAR pipeline for ``mean``, ``std``, ``image_size``.
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
        strict_images: bool = False,
        transform=None,
    ) -> None:
        self.ds = ds.select_columns([image_column, label_column])
        self.strict_images = strict_images
        self.num_replaced = 0
        self.image_column, self.label_column = image_column, label_column
        self.transform = transform or CifarTransform(mean, std, image_size, train)
        # what the teacher cache's key and the card read
        self.mean, self.std = self.transform.mean, self.transform.std
        self.image_size = int(self.transform.image_size)
        self.padding = int(getattr(self.transform, "padding", 0))
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
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

    @property
    def transform_description(self) -> str:
        """What the images go through (shown on the model card)."""
        return str(getattr(self.transform, "description", type(self.transform).__name__))

    def _pixels(self, image, index: int) -> torch.Tensor:
        seed = row_seed(self.seed, self.epoch, index) if self.train else None
        return self.transform(image.convert("RGB"), seed)

    def _decoded_row(self, index: int) -> tuple[Any, int, int]:
        """(image, label, row) of ``index``, or of the next decodable row when its image cannot be decoded."""
        failure = None
        for row in ((index + k) % len(self) for k in range(len(self))):
            try:
                r = self.ds[row]
            except IMAGE_DECODE_ERRORS as e:
                if self.strict_images:
                    raise DataError(
                        f"The image of row {row} cannot be decoded ({e.__class__.__name__}: {e}): repair or "
                        "remove it, or drop --strict_images to skip undecodable images."
                    ) from e
                failure = failure or e
                continue
            if failure is not None:
                self.num_replaced += 1
                logger.warning(
                    "Row %d: undecodable image (%s) replaced by row %d (%d replaced so far; --strict_images fails "
                    "instead).",
                    index,
                    failure.__class__.__name__,
                    row,
                    self.num_replaced,
                )
            return r[self.image_column], int(r[self.label_column]), row
        raise DataError("No image of the split can be decoded.")

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label, row = self._decoded_row(int(index))
        return {"pixel_values": self._pixels(image, row), "labels": label, "index": row}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # One Arrow read for the whole batch instead of one per row (row by row only when an image fails).
        idx = [int(i) for i in indices]
        try:
            rows = self.ds[idx]
        except IMAGE_DECODE_ERRORS:
            return [self[i] for i in idx]
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

    @property
    def transform_description(self) -> str:
        return self.dataset.transform_description


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
    strict_images: bool = False,
    transform=None,
) -> PreparedSplit:
    """Select, check and wrap one split.

    Args:
        ds: the raw split.
        mean, std, image_size: the student's normalization and input size (those of ``transform`` when given).
        train: apply the training augmentation.
        image_column, label_column: override the detected columns.
        max_samples: keep only the first rows (a deterministic subset).
        seed: seed of the augmentation.
        strict_images: refuse undecodable images instead of skipping them. A split of at most
            :data:`UPFRONT_IMAGE_CHECK_ROWS` rows is decoded once here and its undecodable rows dropped (or refused);
            a larger one replaces such an image, when a batch meets it, by the next decodable row (or fails).
        transform: the image transform (:func:`hf_distill.data.transforms.model_pipeline`'s ``train`` or ``eval``);
            default: the CIFAR pipeline for ``mean``, ``std`` and ``image_size``. Its output on the first row is
            checked to be a (3, image_size, image_size) float tensor.

    Returns:
        A :class:`PreparedSplit` whose dataset yields ``pixel_values``, ``labels`` and ``index`` (the row).

    Raises:
        DataError: an empty split (``max_samples`` 0), labels out of range, undecodable images with
            ``strict_images``, or a transform whose output is not a (3, image_size, image_size) float tensor.
    """
    image_column, label_column = resolve_columns(ds, image_column, label_column)
    if max_samples is not None and max_samples < len(ds):
        ds = ds.select(range(max(0, max_samples)))
    what = "training" if train else "evaluation"
    if len(ds) == 0:
        flag = "--max_train_samples" if train else "--max_eval_samples"
        cause = f" after {flag} {max_samples}" if max_samples is not None else ""
        raise DataError(f"The {what} split is empty{cause}: use at least one row.")
    if len(ds) <= UPFRONT_IMAGE_CHECK_ROWS:
        ds = drop_undecodable(ds, image_column, strict_images, what)
    names = class_names(ds, label_column)
    wrapped = ImageClassificationDataset(
        ds, image_column, label_column, mean, std, image_size, train, seed, names, strict_images, transform
    )
    if transform is not None:
        check_transform_output(wrapped)
    labels = wrapped.labels
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(
            f"Labels in {label_column!r} must lie in [0, {len(names)}), found {labels.min()}..{labels.max()}."
        )
    return PreparedSplit(wrapped, image_column, label_column, names, labels)


def check_transform_output(dataset: ImageClassificationDataset) -> None:
    """Run the transform on the first row and check what it returns.

    Raises:
        DataError: not a float tensor of shape (3, image_size, image_size).
    """
    check_pixel_values(
        dataset[0]["pixel_values"], dataset.image_size, dataset.transform_description, dataset.train
    )


def check_pixel_values(x: Any, image_size: int, transform_description: str, train: bool) -> None:
    """Check one transformed row's ``pixel_values`` (a map-style split's or a stream's first row).

    Raises:
        DataError: not a float tensor of shape (3, image_size, image_size).
    """
    want = (3, image_size, image_size)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or tuple(x.shape) != want:
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(
            f"The {'training' if train else 'evaluation'} transform ({transform_description}) "
            f"returns {got}, not a float tensor of shape {want}: pass --image_size (and --crop_pct) to resize and "
            "center-crop to a square, or choose another --train_transform."
        )


#: what every batch a DistillationTrainer trains or evaluates on carries (the user's transform or collator makes it)
BATCH_KEYS = ("pixel_values", "labels")


def check_batch_rows(dataset, collator, what: str) -> None:
    """The first row of a map-style ``dataset``, through ``collator``, gives :data:`BATCH_KEYS` (streams are
    checked when their first rows are read).

    Raises:
        DataError: a key missing, e.g. a raw ``image``/``label`` dataset without a transform (one line with the fix).
    """
    if (
        dataset is None
        or not hasattr(dataset, "__getitem__")
        or not hasattr(dataset, "__len__")
        or not len(dataset)
    ):
        return
    row = dataset[0]
    keys = sorted(row) if isinstance(row, Mapping) else [type(row).__name__]
    # a user's collator may make the batch from any row (a tuple) into any mapping (a BatchFeature): judge what it
    # returns; our own collate needs the keys in the row, so judge the row (collate would stop on a KeyError)
    custom = collator is not collate
    batch = collator([row]) if custom else row
    missing = [k for k in BATCH_KEYS if not isinstance(batch, Mapping) or k not in batch]
    if missing:
        made_by = "collator's batches" if custom else "rows"
        raise DataError(
            f"The {what} dataset's {made_by} have no {' or '.join(map(repr, missing))} (its first row has "
            f"{', '.join(keys)}): DistillationTrainer takes transformed rows, 'pixel_values' (a float image tensor) "
            "and 'labels' (the class). Give the dataset a transform that returns them (dataset.with_transform, as "
            "in the README's Python API), or the student's own preprocessing: prepare_split(dataset, p.mean, p.std, "
            "p.image_size, train, transform=p.train or p.eval).dataset with p = model_pipeline(student) "
            "(docs/preprocessing.md)."
        )


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack a list of transformed rows (``pixel_values``, ``labels``, and ``index`` where the rows carry one)
    into a batch."""
    batch = {
        "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]),
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
    }
    if all("index" in e for e in examples):
        batch["index"] = torch.tensor([int(e["index"]) for e in examples], dtype=torch.long)
    return batch


class IndexedRows(torch.utils.data.Dataset):
    """A map-style dataset whose rows also carry their position as ``index``: what methods with a per-row state
    (CRD's memory bank) need, added to a user's dataset that yields only ``pixel_values`` and ``labels``.

    Attributes pass through to the wrapped dataset (``set_epoch``, ``features``, ``info``...).
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    @classmethod
    def if_needed(cls, dataset) -> Any:
        """``dataset`` itself when its rows already carry ``index``, else wrapped.

        Raises:
            DataError: a dataset without a length or random access (rows cannot be indexed).
        """
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise DataError(
                f"This objective keeps a state per training row (e.g. CRD's memory bank) and needs a map-style "
                f"dataset (len() and dataset[i]); got {type(dataset).__name__}. Use a map-style dataset or a "
                "method without per-row state."
            )
        if len(dataset) and "index" in dataset[0]:
            return dataset
        return cls(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "index": int(i)}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # defined here: the DataLoader prefers a dataset's batched __getitems__, which __getattr__ would otherwise
        # forward to the wrapped dataset's (rows without their index)
        batched = getattr(self.dataset, "__getitems__", None)  # a datasets.Dataset transforms a batch at once
        rows = batched(indices) if batched is not None else [self.dataset[i] for i in indices]
        return [{**row, "index": int(i)} for row, i in zip(rows, indices)]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def class_names_of(dataset) -> list[str] | None:
    """The class names of a training set: a :class:`PreparedSplit` dataset's, or a ``datasets`` ``ClassLabel``
    feature's (``label``/``labels``/``fine_label``...); None when the dataset does not say."""
    names = getattr(dataset, "class_names", None)
    if names:
        return list(names)
    features = getattr(dataset, "features", None) or {}
    for column in ("labels", "label", *[c for c in features if "label" in c]):
        feature = features.get(column)
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
    return None
