"""Streaming training data: a ``datasets`` ``IterableDataset`` read row by row, for datasets larger than memory or
disk (docs/streaming.md). The file is longer than 500 lines because opening a stream, reading each process's part of
it, decoding in the workers and the resume position are one mechanism: a row's identity, pass and place are defined
once here and each part relies on all three.

How a stream trains:

* **Loading** is ``datasets.load_dataset(..., streaming=True)`` for a Hub id or a local folder (a folder of parquet
  or arrow shards, or a ``datasets`` layout), ``load_dataset("parquet", data_files=..., streaming=True)`` for one file.
* **Each process reads its own shards** (``datasets.distributed.split_dataset_by_node``; when the shard count is not
  a multiple of the processes, every process reads the stream and keeps one row in N).
* **Shuffling** is seeded: the shard order and a ``buffer_size`` shuffle buffer (``IterableDataset.shuffle``), with
  ``set_epoch`` for every pass.
* **Endless**: passes follow one another, so every batch is full and the processes step together; ``--max_steps``
  says how long to train.
* **Row identity**: a 63-bit hash of the row's image bytes (or path) and label, the same whatever the shard layout,
  process count or shuffle; the augmentation is seeded by (seed, pass, identity) as a map-style row's is by
  (seed, epoch, row).
* **Order**: the stream is read in the main process (raw bytes: cheap); images are decoded and augmented by the
  DataLoader workers, in order, so the batches do not depend on ``--dataloader_num_workers``.
* **Exact resume**: every checkpoint holds each process's position (``stream_state_<rank>.json``: the lengths of the
  passes it completed; the rows it consumed are ``global_step x accumulation x batch``). A resumed run replays its
  current pass up to that row without decoding images, so it sees exactly the rows an uninterrupted run sees.
  ``datasets``' own ``state_dict()`` is not used for this: it drops the shuffle buffer's rows on resume (see its
  docstring), and transformers' Trainer does not save a dataloader's state.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import PIL.Image
import pyarrow
import torch
from transformers import TrainerCallback

from .datasets import (
    IMAGE_DECODE_ERRORS,
    PreparedSplit,
    check_pixel_values,
    collate,
    resolve_columns,
    row_seed,
)
from .transforms import CifarTransform, DataError

logger = logging.getLogger(__name__)

#: rows in the shuffle buffer of a stream (``--streaming_shuffle_buffer``)
DEFAULT_SHUFFLE_BUFFER = 1000
#: each process's position in the stream, in every checkpoint
STREAM_STATE_FILE = "stream_state_{rank}.json"
#: what reading a damaged shard raises (pyarrow: ArrowInvalid is a ValueError; I/O errors)
SHARD_READ_ERRORS = (pyarrow.ArrowException, OSError)
_SHARD_EXTENSIONS = (".parquet", ".arrow")


def load_image_stream(name_or_path: str, split: str = "train") -> datasets.IterableDataset:
    """Open one split of a dataset as a stream.

    Args:
        name_or_path: a Hub dataset id, a local folder (of parquet/arrow shards, or a ``datasets`` layout), or one
            ``.parquet``/``.arrow`` file.
        split: the split (no slices such as ``train[:100]``: a stream has no row numbers).

    Raises:
        DataError: a slice, an empty folder, a local shard that cannot be read, or a dataset that cannot be opened.
    """
    if "[" in split:
        raise DataError(
            f"--train_split {split!r} is a slice, which a stream cannot take: pass the split's name (and "
            "--max_steps to train on part of it)."
        )
    if os.path.isfile(name_or_path):
        builder = {".parquet": "parquet", ".arrow": "arrow"}.get(os.path.splitext(name_or_path)[1])
        if builder is None:
            raise DataError(
                f"Cannot stream {name_or_path!r}: use .parquet or .arrow files (or a folder of them)."
            )
        check_local_shards([name_or_path])
        return datasets.load_dataset(builder, data_files={split: name_or_path}, split=split, streaming=True)
    if os.path.isdir(name_or_path):
        shards = local_shards(name_or_path)
        if not shards:
            raise DataError(
                f"--dataset {name_or_path} holds no .parquet or .arrow shard: point --dataset at the folder of the "
                "shards (or at a Hub dataset id)."
            )
        check_local_shards(shards)
    try:
        return datasets.load_dataset(name_or_path, split=split, streaming=True)
    except ValueError as e:  # an unknown split
        raise DataError(f"Cannot stream split {split!r} of {name_or_path!r}: {str(e).splitlines()[0]}") from e
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise DataError(
            f"Could not open dataset {name_or_path!r} as a stream: {str(e).splitlines()[0]}. Pass an existing local "
            "folder of shards or a Hub dataset id on a machine with internet access."
        ) from e


def local_shards(folder: str) -> list[str]:
    """The parquet and arrow files under ``folder`` (any depth), sorted."""
    found = [
        p
        for ext in _SHARD_EXTENSIONS
        for p in glob.glob(os.path.join(folder, "**", f"*{ext}"), recursive=True)
        if os.path.isfile(p)
    ]
    return sorted(found)


def check_local_shards(paths: Sequence[str]) -> None:
    """Read the footer of every local parquet shard (metadata only), so that a damaged one is named before training
    rather than met hours into it.

    Raises:
        DataError: naming the first shard that cannot be read.
    """
    import pyarrow.parquet as pq

    for path in paths:
        if not path.endswith(".parquet"):
            continue
        try:
            pq.ParquetFile(path).metadata  # noqa: B018 - reading the footer is the check
        except SHARD_READ_ERRORS as e:
            raise DataError(
                f"The shard {path} cannot be read ({str(e).splitlines()[0]}): replace or remove it, then run again."
            ) from e


def load_eval_split(name_or_path: str, split: str) -> datasets.Dataset | None:
    """The evaluation split of a streamed dataset, map-style, reading that split's files only (a map-style load of
    the dataset would prepare every split, the large training split too); None when the dataset has no such split.
    """
    if os.path.isfile(name_or_path):
        return None  # a single file is one (training) split
    try:
        data_files = datasets.load_dataset_builder(name_or_path).config.data_files or {}
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as e:
        raise DataError(f"Could not open dataset {name_or_path!r}: {str(e).splitlines()[0]}") from e
    files = data_files.get(split.split("[")[0])
    if not files:
        return None
    return datasets.load_dataset(name_or_path, data_files={split.split("[")[0]: list(files)}, split=split)


def stream_class_names(stream: datasets.IterableDataset, label_column: str) -> list[str]:
    """The class names of a stream's ``ClassLabel`` label column.

    Raises:
        DataError: the label column is not a ``ClassLabel`` (a stream cannot be read whole to count its classes).
    """
    feature = (stream.features or {}).get(label_column)
    if not isinstance(feature, datasets.ClassLabel):
        raise DataError(
            f"The label column {label_column!r} of the stream is {feature}, not a ClassLabel: a stream cannot be read "
            "whole to find its classes. Store the labels as datasets.ClassLabel(names=[...]) in the shards."
        )
    return list(feature.names)


def row_identity(image: dict[str, Any] | None, label: int) -> int:
    """A 63-bit identity of a streamed row: a hash of its image bytes (or path) and label.

    It does not depend on where the row sits (shard, offset, process, shuffle), so it seeds the row's augmentation
    the same way in every run. Two identical rows share an identity, and so their augmentation within a pass.
    """
    h = hashlib.blake2b(digest_size=8)
    data = (image or {}).get("bytes")
    h.update(data if data is not None else str((image or {}).get("path")).encode())
    h.update(int(label).to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


class StreamRows(torch.utils.data.Dataset):
    """Decode and transform raw streamed rows: what the DataLoader workers run. Its "indices" are the raw rows
    themselves (``{"image", "label", "id", "pass"}``), handed out in order by the stream's sampler."""

    def __init__(self, transform, seed: int, num_classes: int, strict_images: bool) -> None:
        self.transform = transform
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        self.strict_images = strict_images
        self.num_replaced = 0

    def _pixels(self, row: dict[str, Any]) -> torch.Tensor:
        cell = row["image"] or {}
        src = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell.get("path")
        with PIL.Image.open(src) as image:
            rgb = image.convert("RGB")
        return self.transform(rgb, row_seed(self.seed, row["pass"], row["id"]))

    def __getitems__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = []
        for row in rows:
            label = int(row["label"])
            if not 0 <= label < self.num_classes:
                raise DataError(f"A streamed row has label {label}, outside [0, {self.num_classes}).")
            try:
                out.append({"pixel_values": self._pixels(row), "labels": label, "index": row["id"]})
            except IMAGE_DECODE_ERRORS as e:
                if self.strict_images:
                    raise DataError(
                        f"A streamed image (row identity {row['id']}) cannot be decoded ({e.__class__.__name__}): "
                        "repair or remove it, or drop --strict_images to replace it within its batch."
                    ) from e
                out.append(None)
        good = [o for o in out if o is not None]
        if not good:
            raise DataError("No image of a streamed batch can be decoded: check the shards.")
        if len(good) < len(out):  # keep the batch full: an undecodable row is replaced by a decodable one
            self.num_replaced += len(out) - len(good)
            logger.warning(
                "%d undecodable streamed image(s) replaced within their batch (%d so far; --strict_images fails "
                "instead).",
                len(out) - len(good),
                self.num_replaced,
            )
            out = [o if o is not None else good[i % len(good)] for i, o in enumerate(out)]
        return out

    def __getitem__(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.__getitems__([row])[0]


class _RawRowSampler(torch.utils.data.Sampler):
    """Hands the stream's raw rows to the DataLoader as its "indices" (read in the main process, in order)."""

    def __init__(self, stream: StreamingImageDataset) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.stream.raw_rows()


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """An endless, seeded, per-process stream of ``{pixel_values, labels, index}`` rows (see the module docstring).

    ``index`` is the row's identity (:func:`row_identity`), not a position: methods that keep a state per row
    (CRD's memory bank) refuse streams. The trainer reads it through :meth:`dataloader`; iterating it directly gives
    the same rows in the same order (one process, images decoded here).

    Args:
        stream: the raw split (image and label columns; the label a ``ClassLabel``).
        image_column, label_column: the columns to read.
        class_names: the classes (``ClassLabel`` names).
        transform: ``transform(rgb_image, seed) -> (3, H, W)`` (:func:`hf_distill.data.transforms.model_pipeline`'s
            ``train``).
        seed: seed of the shuffle and of the augmentation.
        shuffle_buffer: rows in the shuffle buffer; 0 keeps the rows in shard order (the shard order still changes
            with every pass).
        strict_images: fail on an undecodable image instead of replacing it within its batch.
    """

    def __init__(
        self,
        stream: datasets.IterableDataset,
        image_column: str,
        label_column: str,
        class_names: list[str],
        transform,
        seed: int = 0,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        strict_images: bool = False,
    ) -> None:
        if shuffle_buffer < 0:
            raise DataError(f"--streaming_shuffle_buffer must be 0 or more rows, got {shuffle_buffer}.")
        self.source = stream.select_columns([image_column, label_column]).cast_column(
            image_column, datasets.Image(decode=False)
        )
        self.info = stream.info  # the card reads the dataset's name and config
        self._split = stream.split
        self.image_column, self.label_column = image_column, label_column
        self.class_names = list(class_names)
        self.transform = transform
        self.mean, self.std = transform.mean, transform.std
        self.image_size = int(transform.image_size)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.rows = StreamRows(transform, self.seed, len(self.class_names), strict_images)
        self.rank, self.world_size = 0, 1
        #: where the next iteration starts: (pass, rows of that pass already consumed)
        self.start = (0, 0)
        #: the length of every pass this process read to its end (what a resumed run needs to find its place)
        self.pass_lengths: list[int] = []
        self._position_file: dict[str, Any] | None = None

    # -- what the trainer and the card read ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def split(self):
        return self._split

    @property
    def transform_description(self) -> str:
        return str(getattr(self.transform, "description", type(self.transform).__name__))

    @property
    def train(self) -> bool:
        return True

    # -- reading -------------------------------------------------------------------------------------------------
    def for_process(self, rank: int, world_size: int) -> None:
        """Read this process's part of every pass (``split_dataset_by_node``)."""
        self.rank, self.world_size = int(rank), int(world_size)

    def pass_stream(self, epoch: int) -> datasets.IterableDataset:
        """The raw rows this process reads in pass ``epoch``: shuffled (seeded), split by process, at that epoch."""
        ds = self.source
        if self.shuffle_buffer > 0:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        if self.world_size > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        ds.set_epoch(epoch)
        return ds

    def raw_rows(self) -> Iterator[dict[str, Any]]:
        """Every raw row from :attr:`start` on, pass after pass, without end; the rows before :attr:`start` in its
        pass are read again and skipped (images not decoded)."""
        epoch, skip = self.start
        del self.pass_lengths[epoch:]
        while True:
            n = 0
            for row in self._read(self.pass_stream(epoch), epoch):
                n += 1
                if n > skip:
                    image, label = row[self.image_column], int(row[self.label_column])
                    yield {"image": image, "label": label, "id": row_identity(image, label), "pass": epoch}
            if n == 0 or n < skip:
                raise DataError(
                    f"Pass {epoch} of the training stream gave process {self.rank} {n} rows"
                    + (f" but the checkpoint says it had consumed {skip}" if skip else "")
                    + ": the dataset is empty or changed. Check --dataset (and, when resuming, that its shards are "
                    "the ones the run started with)."
                )
            self.pass_lengths.append(n)
            epoch, skip = epoch + 1, 0

    @staticmethod
    def _read(ds: datasets.IterableDataset, epoch: int) -> Iterator[dict[str, Any]]:
        it = iter(ds)
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except SHARD_READ_ERRORS as e:
                raise DataError(
                    f"A shard of the training stream cannot be read in pass {epoch} ({str(e).splitlines()[0]}): "
                    "replace or remove it; the run's checkpoints are intact, resume with --resume_from_checkpoint."
                ) from e
            yield row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.raw_rows():
            yield self.rows[row]

    def head(self, n: int = 2) -> StreamHead:
        """The first ``n`` transformed rows of pass 0 of this process (what the methods' dry run sees)."""
        out = StreamHead(self.class_names)
        for row in self._read(self.pass_stream(0), 0):
            image, label = row[self.image_column], int(row[self.label_column])
            out.append(
                self.rows[{"image": image, "label": label, "id": row_identity(image, label), "pass": 0}]
            )
            if len(out) == n:
                break
        if not out:
            raise DataError("The training stream is empty: check --dataset and --train_split.")
        return out

    def dataloader(
        self, batch_size: int, collate_fn=collate, **loader_kwargs: Any
    ) -> torch.utils.data.DataLoader:
        """A DataLoader of full batches in stream order: rows read here, decoded and augmented by its workers.

        ``loader_kwargs``: the DataLoader's ``num_workers``, ``pin_memory``, ``persistent_workers``,
        ``prefetch_factor``, ``multiprocessing_context`` (order is always kept).
        """
        loader_kwargs = {k: v for k, v in loader_kwargs.items() if v is not None}
        if not loader_kwargs.get("num_workers"):
            loader_kwargs.pop("prefetch_factor", None)
            loader_kwargs.pop("persistent_workers", None)
            loader_kwargs.pop("multiprocessing_context", None)
        return torch.utils.data.DataLoader(
            self.rows,
            batch_size=batch_size,
            sampler=_RawRowSampler(self),
            collate_fn=collate_fn,
            in_order=True,
            **loader_kwargs,
        )

    # -- resuming ------------------------------------------------------------------------------------------------
    def begin(self, rank: int, world_size: int, resume_from_checkpoint: str | bool | None, args) -> None:
        """Before ``train()``: read this process's part, from the first row or from the checkpoint's position.

        Raises:
            DataError: see :meth:`load_position`.
        """
        self.for_process(rank, world_size)
        self.rewind()
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
        if resume_from_checkpoint:
            self.load_position(str(resume_from_checkpoint))

    def position(self, rows_consumed: int) -> dict[str, Any]:
        """What a checkpoint records for this process after it consumed ``rows_consumed`` rows."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "rows": int(rows_consumed),
            "pass_lengths": list(self.pass_lengths),
            "seed": self.seed,
            "shuffle_buffer": self.shuffle_buffer,
        }

    def rewind(self) -> None:
        """Start from the first row (a fresh ``train()``)."""
        self.start, self.pass_lengths, self._position_file = (0, 0), [], None

    def load_position(self, checkpoint: str) -> None:
        """Read this process's position from ``checkpoint``; :meth:`seek` then moves there.

        Raises:
            DataError: no position for this process, or one written by another number of processes, seed or
                shuffle buffer (the stream would be another one).
        """
        path = os.path.join(checkpoint, STREAM_STATE_FILE.format(rank=self.rank))
        if not os.path.isfile(path):
            raise DataError(
                f"{checkpoint} holds no stream position for process {self.rank} ({os.path.basename(path)}): it was "
                "not written by a --streaming run with this process count. Resume it without --streaming, or with "
                "the processes that wrote it."
            )
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        now = {"world_size": self.world_size, "seed": self.seed, "shuffle_buffer": self.shuffle_buffer}
        changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if changed:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            raise DataError(
                f"{checkpoint} was written by a stream read differently ({what}): each process's rows would not be "
                "the ones it saw. Resume with the checkpoint's process count, --seed and --streaming_shuffle_buffer."
            )
        self._position_file = saved

    def seek(self, rows_consumed: int) -> None:
        """Start the next iteration after ``rows_consumed`` rows (this process's), at the place the loaded
        checkpoint position gives.

        Raises:
            DataError: no position loaded, or one for another number of rows.
        """
        saved = self._position_file
        if saved is None or int(saved["rows"]) != int(rows_consumed):
            raise DataError(
                f"The stream cannot resume after {rows_consumed} rows: the checkpoint's stream position says "
                f"{None if saved is None else saved['rows']}. Resume with the checkpoint's --per_device_train_batch_size "
                "and --gradient_accumulation_steps."
            )
        lengths, epoch, rest = [int(n) for n in saved["pass_lengths"]], 0, int(rows_consumed)
        while epoch < len(lengths) and rest >= lengths[epoch]:
            rest -= lengths[epoch]
            epoch += 1
        self.pass_lengths = lengths[:epoch]
        self.start = (epoch, rest)
        logger.info("Resuming the stream at pass %d, row %d of this process's part of it.", epoch, rest)


class StreamPosition(TrainerCallback):
    """Write every process's stream position into each checkpoint it saves (``stream_state_<rank>.json``), before
    upstream writes the checkpoint's ``trainer_state.json``, so that a complete checkpoint always has it."""

    def __init__(self, stream: StreamingImageDataset) -> None:
        self.stream = stream

    def on_step_end(self, args, state, control, **kwargs):
        if not control.should_save:
            return
        rows = state.global_step * args.gradient_accumulation_steps * args.train_batch_size
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, STREAM_STATE_FILE.format(rank=self.stream.rank))
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(self.stream.position(rows), f)
        os.replace(path + ".tmp", path)


class StreamHead(list):
    """A stream's first rows, with its classes: the small map-style set the model is built and checked from."""

    def __init__(self, class_names: list[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stream_loader(
    stream: StreamingImageDataset, args, collate_fn, accelerator
) -> torch.utils.data.DataLoader:
    """The training DataLoader of ``stream`` for one process (``TrainingArguments``' batch size and loader
    options), placed on the device by Accelerate without splitting it again: the stream is this process's already.
    """
    from accelerate.data_loader import prepare_data_loader

    stream.for_process(args.process_index, args.world_size)
    loader = stream.dataloader(
        args.train_batch_size,
        collate_fn,
        num_workers=args.dataloader_num_workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers,
        prefetch_factor=args.dataloader_prefetch_factor,
    )
    return prepare_data_loader(
        loader,
        device=args.device,
        num_processes=1,
        process_index=0,
        put_on_device=True,
        dispatch_batches=False,
        non_blocking=accelerator.dataloader_config.non_blocking,
    )


def prepare_stream(
    stream: datasets.IterableDataset,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    image_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    strict_images: bool = False,
    transform=None,
) -> PreparedSplit:
    """Check and wrap a streamed training split (the streaming counterpart of
    :func:`hf_distill.data.datasets.prepare_split`).

    Args:
        stream: the raw split, e.g. ``datasets.load_dataset(..., streaming=True)``.
        mean, std, image_size: the student's normalization and input size (those of ``transform`` when given).
        image_column, label_column: override the detected columns.
        seed: seed of the shuffle and the augmentation.
        shuffle_buffer: rows in the shuffle buffer (0: shard order only).
        strict_images: refuse undecodable images instead of replacing them within their batch.
        transform: the training transform; default: the CIFAR pipeline for ``mean``, ``std``, ``image_size``.

    Returns:
        A :class:`~hf_distill.data.datasets.PreparedSplit` whose dataset is a :class:`StreamingImageDataset`
        (``labels`` is empty: a stream's labels are not known in advance).

    Raises:
        DataError: no label or image column, a label column that is not a ``ClassLabel``, or a transform whose output
            is not a (3, image_size, image_size) float tensor.
    """
    if not isinstance(stream, datasets.IterableDataset):
        raise DataError(
            f"prepare_stream needs a datasets.IterableDataset (load_dataset(..., streaming=True)), got "
            f"{type(stream).__name__}; use hf_distill.data.datasets.prepare_split for a map-style dataset."
        )
    if stream.features is None:
        raise DataError(
            "The stream does not declare its columns (features unknown, e.g. after a map()): pass a stream whose "
            "features are known, or cast it with .cast(features)."
        )
    image_column, label_column = resolve_columns(stream, image_column, label_column)
    names = stream_class_names(stream, label_column)
    transform = transform or CifarTransform(mean, std, image_size, train=True)
    wrapped = StreamingImageDataset(
        stream, image_column, label_column, names, transform, seed, shuffle_buffer, strict_images
    )
    check_pixel_values(
        wrapped.head(1)[0]["pixel_values"], wrapped.image_size, wrapped.transform_description, train=True
    )
    return PreparedSplit(wrapped, image_column, label_column, names, torch.empty(0, dtype=torch.long))


def is_stream(dataset) -> bool:
    """Whether ``dataset`` is a :class:`StreamingImageDataset`."""
    return isinstance(dataset, StreamingImageDataset)


__all__ = [
    "DEFAULT_SHUFFLE_BUFFER",
    "STREAM_STATE_FILE",
    "StreamPosition",
    "StreamHead",
    "StreamRows",
    "StreamingImageDataset",
    "check_local_shards",
    "is_stream",
    "load_eval_split",
    "load_image_stream",
    "local_shards",
    "prepare_stream",
    "row_identity",
    "stream_class_names",
    "stream_loader",
]
