"""An exact cache of the teacher's outputs on disk (``--teacher_cache DIR``), in the spirit of FKD's stored soft
labels (Shen & Xing, ECCV 2022), but exact: a run that reads it trains the same student as a run that does not. The
file is longer than 500 lines because :class:`TeacherCache` is one class of about 330 lines: the key, the epoch held
in memory, the reads and the writes share its state. The signed shards it reads and writes live in
:mod:`~hf_distill.training.teacher_cache_shards`, the rows of its top-k mode in
:mod:`~hf_distill.training.teacher_cache_topk`.

A teacher's outputs are a function of the teacher and of its input, and the training input is a function of the
image and its augmentation, which :class:`~hf_distill.data.datasets.ImageClassificationDataset` seeds by (seed, epoch, row).
So the outputs of one training epoch are stored under a key made of:

* the teacher: a SHA-256 of its weights and buffers, its class, the input conversion from the student's
  normalization, the autocast precision, the memory format, the device type and the torch version;
* the request: which outputs the methods take (logits, embedding, which maps, pre-activation);
* the data and the transform: the dataset's fingerprint and size, the normalization, size and augmentation;
* the seed (a directory per key) and the epoch (a directory per epoch), and the row (inside each shard).

Every stored row also carries a 64-bit digest of the exact input pixels it was computed from, compared on every read:
even a key that failed to capture some change (new augmentation code, another image decoder) is a miss, never a wrong
output. Anything that does not match is a miss: the teacher runs and its outputs are stored for the next run.

On disk: ``DIR/<key hash>/key.json`` (the key, readable) and ``DIR/<key hash>/epoch-<e>/<signer>-<tag>.safetensors``,
one shard per flush of one process (every ``flush_rows`` computed rows, at each epoch end, checkpoint and at the end of
training). A shard is written under a temporary name and renamed; two runs writing the same cache at once only ever
add whole shards.

Shards are signed with a per-user key kept outside the cache: a shard that does not verify is refused, removed and
its rows computed again, and other users' shards are never read (:mod:`~hf_distill.training.teacher_cache_shards`).
Shards store every output in the precision the teacher produced it (float32 unless the run uses bf16/fp16 autocast),
intermediate maps included: map-consuming methods are cached too, at their full size (reported in the logs and by
:meth:`TeacherCache.report`).

The top-k mode (``topk=k``, ``--teacher_cache_topk K``; off by default) is the one lossy mode, for logits: a row
keeps its k largest logits and one tail logit, and the methods receive the logits rebuilt from them
(:mod:`~hf_distill.training.teacher_cache_topk`). A top-k run receives the reconstructed logits whether its rows are
read or computed, so it trains the same student on a cold cache as on a warm one. The key holds k: top-k and exact
caches (and two values of k) never serve each other. See ``docs/teacher_cache.md``.

An ensemble of teachers gets one cache per teacher (:class:`EnsembleTeacherCache`), each under the key a run of that
teacher alone would use: single-teacher runs and ensembles of the same teachers share what they stored.

The rows of the epoch being trained are held in memory (about 20 MB per epoch for CIFAR-100 logits of 50,000 rows;
maps take much more). Evaluation never uses the cache, and a run without a teacher (``--method none``) never opens it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..methods import Features
from .teacher_cache_shards import (
    CACHE_FORMAT,
    CLASSES_META,
    DIGEST,
    INDEX,
    SHARD_SUFFIX,
    TOPK_META,
    read_shard,
    signer_id,
    signing_key,
    signing_key_path,
    write_shard,
)
from .teacher_cache_topk import (
    TAIL_LOGIT,
    TOPK_INDICES,
    TOPK_VALUES,
    check_topk,
    topk_compress,
    topk_reconstruct,
    topk_refusal,
)

logger = logging.getLogger(__name__)

#: a feature map's column in a shard is its name under this prefix (``map.<name>``)
MAP_PREFIX = "map."
#: a bar is drawn only for an epoch load that lasts longer than this (a CIFAR epoch loads in milliseconds)
PROGRESS_DELAY_S = 2.0


# -- fingerprints -----------------------------------------------------------------------------------------------
def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor in standard (row-major) layout, whatever its dtype and memory format."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's class and of every parameter and buffer (non-persistent ones included, such as an input
    adapter's normalization): names, dtypes, shapes and values."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def input_digests(pixel_values: Tensor) -> Tensor:
    """A 64-bit digest of each row's exact pixel values, as an int64 tensor of shape (B,)."""
    x = pixel_values.detach().cpu().contiguous()
    rows = x.reshape(len(x), -1).view(torch.uint8).numpy()
    return torch.tensor(
        [
            int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little", signed=True)
            for r in rows
        ],
        dtype=torch.long,
    )


def dataset_fingerprint(dataset) -> dict[str, str]:
    """The data and transform parts of the key, from a dataset prepared by :func:`hf_distill.data.datasets.prepare_split`.

    Raises:
        ValueError: a dataset whose augmentation is not seeded by (seed, epoch, row): its outputs cannot be cached.
    """
    raw = getattr(dataset, "ds", None)
    if not all(hasattr(dataset, a) for a in ("set_epoch", "epoch", "seed")) or not hasattr(
        raw, "_fingerprint"
    ):
        raise ValueError(
            f"--teacher_cache needs a training set whose augmentation is seeded by (seed, epoch, row), got a "
            f"{type(dataset).__name__}: prepare it with hf_distill.data.datasets.prepare_split, or drop --teacher_cache."
        )
    transform = {
        "class": type(dataset).__qualname__,
        "train": bool(dataset.train),
        "image_size": int(dataset.image_size),
        "padding": int(getattr(dataset, "padding", 0)),
        "mean": dataset.mean.flatten().tolist(),
        "std": dataset.std.flatten().tolist(),
    }
    return {
        "data": f"{raw._fingerprint}|rows={len(dataset)}|columns={dataset.image_column},{dataset.label_column}",
        "transform": json.dumps(transform, sort_keys=True),
        "seed": str(int(dataset.seed)),
    }


def precision_of(args, teacher_precision: str = "same") -> str:
    """What the teacher's outputs are computed in: ``--teacher_precision`` when set, else the run's autocast
    precision (``TrainingArguments``)."""
    if teacher_precision != "same":
        return teacher_precision
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def features_to_tensors(f: Features) -> dict[str, Tensor]:
    out = {MAP_PREFIX + k: v for k, v in f.maps.items()}
    for name in ("logits", "embedding"):
        if getattr(f, name) is not None:
            out[name] = getattr(f, name)
    return {k: v.detach().cpu() for k, v in out.items()}


def teacher_key(
    teacher: nn.Module, adapter: nn.Module, request, label_order: Tensor | None
) -> dict[str, Any]:
    """The teacher's part of a cache key: its weights, its input conversion, what is requested of it and the class
    order its stored logits are in (the student's: :mod:`hf_distill.data.labels`)."""
    return {
        "teacher": module_fingerprint(teacher),
        "teacher_input": f"{type(adapter).__qualname__}:{module_fingerprint(adapter)}:"
        f"{adapter.identity}:{adapter.resize}",
        "request": json.dumps(asdict(request), sort_keys=True),
        "label_order": None if label_order is None else label_order.tolist(),
    }


# -- the cache --------------------------------------------------------------------------------------------------
class TeacherCache:
    """Teacher outputs of one key (teacher, request, data, transform, seed), per epoch and row, on disk.

    Args:
        root: the cache directory (shared by any number of keys and runs).
        key: the key's parts (strings); its SHA-256 names the key's directory.
        dataset: the training set; its ``epoch`` says which epoch a batch belongs to.
        channels_last: return 4-d maps in channels-last memory format, as the teacher produces them then.
        flush_rows: write a shard once this many computed rows are waiting.
        is_main: log the summaries (one process of a multi-process run).
        topk: store only the k largest logits of each row and serve the logits
            :func:`~hf_distill.training.teacher_cache_topk.topk_reconstruct` rebuilds (see the module docstring);
            ``None`` (the default): exact. Part of the key (``key["topk"]``).
        progress: draw a progress bar while an epoch's shards are read and verified, when that takes more than
            :data:`PROGRESS_DELAY_S` seconds.

    Raises:
        ValueError: ``topk`` is not a positive integer.
    """

    def __init__(
        self,
        root: str,
        key: dict[str, str],
        dataset,
        channels_last: bool = False,
        flush_rows: int = 8192,
        is_main: bool = True,
        topk: int | None = None,
        progress: bool = False,
    ) -> None:
        check_topk(topk)
        self.topk = topk
        # an exact key stays as it was (caches already on disk keep serving); a top-k key holds k
        self.key = dict(key) if topk is None else {**key, TOPK_META: str(topk)}
        self.key_hash = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()
        self.dir = os.path.join(root, self.key_hash[:24])
        self.dataset = dataset
        self.num_rows = len(dataset)
        self.channels_last = channels_last
        self.flush_rows = flush_rows
        self.is_main = is_main
        self.progress = progress
        #: the classes of the stored top-k rows (from the shards or the first computed batch)
        self.num_classes: int | None = None
        self.signing_key = signing_key()
        self.signer = signer_id(self.signing_key)
        self.read_rows = self.computed_rows = self.written_bytes = self.rejected_shards = 0
        #: shards signed by other keys (other users of a shared cache dir): never read, never removed
        self.foreign_shards = 0
        self._epoch: int | None = None
        self._pos = torch.full((self.num_rows,), -1, dtype=torch.long)
        self._stored: dict[str, Tensor] = {}
        self._pending: list[tuple[int, dict[str, Tensor]]] = []
        self._write_key_file()

    @classmethod
    def for_trainer(
        cls, root: str, trainer, topk: int | None = None
    ) -> TeacherCache | EnsembleTeacherCache | None:
        """The cache of a :class:`~hf_distill.training.trainer.DistillationTrainer`'s teacher and training set, with its
        callback (flush at epoch ends, checkpoints and the end of training) added; ``None`` when the run never
        runs the teacher in training (no teacher, or ``--method none``). An ensemble gets one cache per teacher
        (:class:`EnsembleTeacherCache`), each under the key a run of that teacher alone would use. ``topk``: the
        top-k mode (see the module docstring).

        Raises:
            ValueError: ``topk`` is not a positive integer below the number of classes, or a method reads more of
                the teacher than its logits (:func:`~hf_distill.training.teacher_cache_topk.topk_refusal`).
        """
        objective = trainer.model.objective
        if trainer.teacher is None or not objective.needs_teacher:
            logger.info("--teacher_cache %s is unused: this run never runs a teacher in training.", root)
            return None
        if topk is not None:
            check_topk(topk, trainer.data_info.num_classes or None)
            refusal = topk_refusal({k: m.needs().teacher for k, m in objective.methods.items()})
            if refusal:
                raise ValueError(refusal)
        args = trainer.args
        run_key = {
            "format": CACHE_FORMAT,
            "precision": precision_of(args, trainer.teacher_precision),
            "channels_last": str(bool(trainer.channels_last)),
            "device": args.device.type,
            "torch": torch.__version__,
            **dataset_fingerprint(trainer.train_dataset),
        }
        ensemble = getattr(trainer, "ensemble", None)
        if ensemble is None:
            teachers = [
                (
                    trainer.teacher,
                    trainer.teacher_adapter,
                    trainer.teacher_request,
                    trainer.teacher_label_order,
                )
            ]
        else:
            teachers = list(
                zip(ensemble.teachers, ensemble.adapters, ensemble.requests, ensemble.label_orders)
            )
        # the bar follows the Trainer's: off with --disable_tqdm, under --log_level error, and on replicas
        quiet = args.disable_tqdm or args.get_process_log_level() > logging.WARNING
        caches = []
        for teacher, adapter, request, label_order in teachers:
            key = {
                **run_key,
                **teacher_key(trainer.accelerator.unwrap_model(teacher), adapter, request, label_order),
            }
            cache = cls(
                root,
                key,
                trainer.train_dataset,
                trainer.channels_last,
                is_main=trainer.is_world_process_zero(),
                topk=topk,
                progress=trainer.is_world_process_zero() and not quiet,
            )
            if cache.is_main:
                logger.info("Teacher cache %s (%s)", cache.dir, cache.size_summary())
            caches.append(cache)
        trainer.add_callback(TeacherCacheCallback(*caches))
        return caches[0] if ensemble is None else EnsembleTeacherCache(caches)

    def _write_key_file(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, "key.json")
        if not os.path.exists(path):
            tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"hash": self.key_hash, **self.key}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)

    def epoch_dir(self, epoch: int) -> str:
        return os.path.join(self.dir, f"epoch-{epoch:05d}")

    @property
    def mode(self) -> str:
        """``exact`` or ``top-<k>``: what this cache stores."""
        return "exact" if self.topk is None else f"top-{self.topk}"

    # -- reading -----------------------------------------------------------------------------------------------
    def _load_epoch(self, epoch: int) -> None:
        """Index every valid shard of ``epoch``; remove the invalid ones (their rows will be computed again)."""
        self._epoch = epoch
        self._pos.fill_(-1)
        parts: list[dict[str, Tensor]] = []
        folder = self.epoch_dir(epoch)
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        shards = [n for n in names if n.endswith(SHARD_SUFFIX) and not n.startswith(".")]
        ours = [n for n in shards if n.startswith(self.signer + "-")]
        self.foreign_shards += len(shards) - len(ours)
        sizes = {n: _size(os.path.join(folder, n)) for n in ours}
        with tqdm(
            total=sum(sizes.values()),
            unit="B",
            unit_scale=True,
            desc=f"Teacher cache: reading epoch {epoch}",
            disable=not self.progress or not ours,
            delay=PROGRESS_DELAY_S,
            leave=False,
        ) as bar:
            for name in ours:
                path = os.path.join(folder, name)
                shard = read_shard(path, self.key_hash, epoch, self.signing_key, self.topk)
                bar.update(sizes[name])
                if shard is not None and self._fits(*shard, parts[0] if parts else None):
                    parts.append(shard[0])
                    continue
                self.rejected_shards += 1
                logger.warning(
                    "Teacher cache: refusing and removing the shard %s: it is not a valid shard signed with your key "
                    "%s (damaged, or edited by someone without the key); its rows will be computed again.",
                    path,
                    signing_key_path(),
                )
                try:
                    os.remove(path)
                except OSError:
                    pass
        self._stored = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
        if parts:
            self._pos[self._stored[INDEX]] = torch.arange(len(self._stored[INDEX]))

    def _fits(
        self, tensors: dict[str, Tensor], meta: dict[str, str], first: dict[str, Tensor] | None
    ) -> bool:
        """A shard holds rows of this training set and the same outputs as the epoch's other shards (top-k: over
        the same classes)."""
        index = tensors[INDEX]
        in_range = len(index) > 0 and int(index.min()) >= 0 and int(index.max()) < self.num_rows
        if not in_range or (first is not None and set(tensors) != set(first)):
            return False
        if self.topk is not None:
            classes = int(meta[CLASSES_META])
            if self.num_classes not in (None, classes) or int(tensors[TOPK_INDICES].max()) >= classes:
                return False
            self.num_classes = classes
        return True

    def lookup(self, epoch: int, index: Tensor, digests: Tensor) -> Features | None:
        """The stored outputs of these rows of ``epoch`` (top-k: the reconstructed logits), or ``None`` unless
        every row is stored with the same input digest."""
        if epoch != self._epoch:
            self.flush()
            self._load_epoch(epoch)
        if not self._stored or int(index.max()) >= self.num_rows:
            return None
        pos = self._pos[index]
        if bool((pos < 0).any()) or not torch.equal(self._stored[DIGEST][pos], digests):
            return None
        return self._features_of({k: v[pos] for k, v in self._stored.items() if k not in (INDEX, DIGEST)})

    def _features_of(self, rows: dict[str, Tensor]) -> Features:
        """What the methods receive from stored rows (on the CPU)."""
        if self.topk is not None:
            logits = topk_reconstruct(
                rows[TOPK_VALUES], rows[TOPK_INDICES], rows[TAIL_LOGIT], self.num_classes
            )
            return Features(logits=logits)
        if self.channels_last:
            rows = {
                k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                for k, v in rows.items()
            }
        return Features(
            logits=rows.get("logits"),
            embedding=rows.get("embedding"),
            maps={k[len(MAP_PREFIX) :]: v for k, v in rows.items() if k.startswith(MAP_PREFIX)},
        )

    def _rows_of(self, feats: Features) -> dict[str, Tensor]:
        """What is stored of computed outputs: all of them, or (top-k) the top-k rows of the logits.

        Raises:
            ValueError: top-k outputs other than logits (a caller that bypassed :meth:`for_trainer`'s check).
        """
        if self.topk is None:
            return features_to_tensors(feats)
        if feats.logits is None or feats.embedding is not None or feats.maps:
            raise ValueError(
                "--teacher_cache_topk stores the teacher's logits only, but it was given "
                f"{'an embedding' if feats.embedding is not None else 'feature maps' if feats.maps else 'no logits'}"
                ": drop --teacher_cache_topk (the exact cache stores every output)."
            )
        logits = feats.logits.detach().cpu()
        if self.num_classes not in (None, logits.shape[-1]):
            raise ValueError(
                f"The teacher gave {logits.shape[-1]} classes, but the top-k cache {self.dir} stores "
                f"{self.num_classes}: use another --teacher_cache directory."
            )
        self.num_classes = logits.shape[-1]
        return topk_compress(logits, self.topk)

    def features(
        self,
        pixel_values: Tensor,
        index: Tensor,
        compute: Callable[[], Features],
        digests: Tensor | None = None,
    ) -> Features:
        """The teacher's outputs for a training batch: read from the cache when every row is stored, else
        ``compute()`` (the teacher's forward) and store its outputs. ``digests``: the batch's
        :func:`input_digests`, when the caller already has them (each ensemble member's cache sees the same
        batch). A top-k cache returns the reconstructed logits in both cases: a run's result does not depend on
        whether the cache was warm."""
        epoch = int(self.dataset.epoch)
        index = index.detach().cpu().long()
        digests = input_digests(pixel_values) if digests is None else digests
        cached = self.lookup(epoch, index, digests)
        if cached is not None:
            self.read_rows += len(index)
            return _on(cached, pixel_values.device)
        feats = compute()
        self.computed_rows += len(index)
        rows = self._rows_of(feats)
        self._pending.append((epoch, {INDEX: index, DIGEST: digests, **rows}))
        if sum(len(p[INDEX]) for _, p in self._pending) >= self.flush_rows:
            self.flush()
        return feats if self.topk is None else _on(self._features_of(rows), pixel_values.device)

    # -- writing -----------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the computed rows that are waiting, one shard per epoch."""
        pending, self._pending = self._pending, []
        for epoch in sorted({e for e, _ in pending}):
            rows = [p for e, p in pending if e == epoch]
            tensors = {k: torch.cat([p[k] for p in rows]) for k in rows[0]}
            meta = {
                "format": CACHE_FORMAT,
                "key": self.key_hash,
                "epoch": str(epoch),
                "rows": str(len(tensors[INDEX])),
            }
            if self.topk is not None:
                meta |= {TOPK_META: str(self.topk), CLASSES_META: str(self.num_classes)}
            self.written_bytes += write_shard(self.epoch_dir(epoch), tensors, meta, self.signing_key)

    # -- reporting ---------------------------------------------------------------------------------------------
    def disk_usage(self) -> dict[int, int]:
        """Bytes of valid-looking shards on disk, per epoch."""
        out: dict[int, int] = {}
        for name in sorted(os.listdir(self.dir)):
            if name.startswith("epoch-"):
                folder = os.path.join(self.dir, name)
                files = [f for f in os.listdir(folder) if f.endswith(SHARD_SUFFIX) and not f.startswith(".")]
                out[int(name[len("epoch-") :])] = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
        return out

    def size_summary(self) -> str:
        usage = self.disk_usage()
        total = sum(usage.values())
        per = total / len(usage) if usage else 0
        return (
            f"{self.mode}, {len(usage)} epochs stored, {total / 2**20:.2f} MiB on disk, "
            f"{per / 2**20:.2f} MiB per epoch"
        )

    def report(self) -> dict[str, Any]:
        """What this process read and computed, and the key's disk use (for logs and ``distill_results.json``)."""
        usage = self.disk_usage()
        return {
            "teacher_cache_dir": self.dir,
            "teacher_cache_mode": self.mode,
            "teacher_cache_read_rows": self.read_rows,
            "teacher_cache_computed_rows": self.computed_rows,
            "teacher_cache_written_bytes": self.written_bytes,
            "teacher_cache_rejected_shards": self.rejected_shards,
            "teacher_cache_epochs_stored": len(usage),
            "teacher_cache_bytes": sum(usage.values()),
            "teacher_cache_bytes_per_epoch": round(sum(usage.values()) / len(usage)) if usage else 0,
        }


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # removed meanwhile (another process rejected it): read_shard refuses it
        return 0


def _on(f: Features, device: torch.device) -> Features:
    return Features(
        logits=None if f.logits is None else f.logits.to(device),
        embedding=None if f.embedding is None else f.embedding.to(device),
        maps={k: v.to(device) for k, v in f.maps.items()},
    )


class EnsembleTeacherCache:
    """The caches of an ensemble's teachers, one per teacher under the key a run of that teacher alone would use:
    an ensemble reads what single-teacher runs (or other ensembles) of the same teachers stored, and the other way
    round. Row counts add up over the teachers (two teachers over 100 rows: 200 rows)."""

    def __init__(self, members: list[TeacherCache]) -> None:
        self.members = members

    @property
    def read_rows(self) -> int:
        return sum(m.read_rows for m in self.members)

    @property
    def computed_rows(self) -> int:
        return sum(m.computed_rows for m in self.members)

    def report(self) -> dict[str, Any]:
        """The members' reports added up; the directories listed, the epochs stored by every member."""
        reports = [m.report() for m in self.members]
        listed = ("teacher_cache_dir", "teacher_cache_mode")
        out = {k: sum(r[k] for r in reports) for k in reports[0] if k not in listed}
        out["teacher_cache_dir"] = [r["teacher_cache_dir"] for r in reports]
        out["teacher_cache_mode"] = reports[0]["teacher_cache_mode"]  # one mode for the whole run
        out["teacher_cache_epochs_stored"] = min(r["teacher_cache_epochs_stored"] for r in reports)
        return out


class TeacherCacheCallback(TrainerCallback):
    """Write the waiting rows of :class:`TeacherCache` s (an ensemble's: one per teacher) at each epoch end,
    checkpoint and at the end of training."""

    def __init__(self, *caches: TeacherCache) -> None:
        self.caches = caches

    def flush(self) -> None:
        for cache in self.caches:
            cache.flush()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.flush()
        for c in self.caches:
            if c.is_main:
                logger.info(
                    "Teacher cache: %d rows read, %d computed so far; %s",
                    c.read_rows,
                    c.computed_rows,
                    c.size_summary(),
                )

    def on_save(self, args, state, control, **kwargs):
        self.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.flush()


__all__ = [
    "EnsembleTeacherCache",
    "TeacherCache",
    "TeacherCacheCallback",
    "dataset_fingerprint",
    "input_digests",
    "module_fingerprint",
    "teacher_key",
]
