"""Guards around a whole run of ``recipes/distill.py``: the output folder and the teacher.

* :func:`guarded_output_dir`: refuses an output path that is a file, or a folder that already holds files (the HF
  examples' convention: unless ``--overwrite_output_dir`` or resuming), holds a lock file naming this run for the
  whole run (a second run into the same folder fails with one line naming the first; a lock left by a killed run is
  recognized and cleared), and on failure removes the folders the run created and left empty.
* :func:`warn_if_teacher_at_chance`: evaluates the teacher on a few hundred rows before training and warns loudly
  when it does no better than guessing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from ..redact import redact_command

logger = logging.getLogger(__name__)

#: the lock file inside the output folder, present while a run writes there. It names the host and the pid, so it must
#: never be uploaded: the leading underscore is one of upstream ``Trainer.push_to_hub``'s ignore patterns (``_*``)
#: as well as ours (:data:`hf_distill.hub.publish.IGNORE_PATTERNS`)
LOCK_NAME = "_hf_distill.lock"
#: the name earlier versions used (recognised so that a run of an older version still guards the folder)
OLD_LOCK_NAME = ".hf_distill.lock"
#: a lock file that cannot be read (a run killed while writing it) counts as stale after this many seconds
UNREADABLE_LOCK_AGE_S = 60.0
#: rows of the evaluation (or training) set on which the teacher is checked before training
TEACHER_CHECK_ROWS = 512


class OutputFolderError(ValueError):
    """An output folder that this run may not write into; the message says why and what to do."""


@dataclass
class LockHolder:
    """Who holds an output folder's lock."""

    pid: int
    host: str
    started: str
    command: str
    process_start: str | None = None  # the kernel's start time of ``pid``, to tell a reused pid apart

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}: {self.command}"


def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux ``/proc``), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: LockHolder) -> bool:
    """Whether a lock was left by a run that no longer runs: same host and its process is gone (or the pid now
    belongs to a process started at another time). A lock from another host is never judged stale."""
    if holder.host != socket.gethostname():
        return False
    if not _alive(holder.pid):
        return True
    now = _process_start(holder.pid)
    return holder.process_start is not None and now is not None and now != holder.process_start


def read_lock(path: str) -> LockHolder | None:
    """The holder written in a lock file, or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return LockHolder(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def acquire_lock(folder: str) -> str:
    """Create ``folder/LOCK_NAME`` for this process, clearing a stale one; return its path.

    Raises:
        OutputFolderError: another live run holds the lock (the message names it).
    """
    path = os.path.join(folder, LOCK_NAME)
    me = LockHolder(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=datetime.datetime.now().isoformat(timespec="seconds"),
        command=redact_command(sys.argv),  # never a --hub_token value
        process_start=_process_start(os.getpid()),
    )
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(path)
            age = time.time() - os.path.getmtime(path) if os.path.exists(path) else 0.0
            if (holder is None and age > UNREADABLE_LOCK_AGE_S) or (holder is not None and is_stale(holder)):
                logger.warning(
                    "Clearing a stale lock in %s left by a run that no longer runs (%s).",
                    folder,
                    holder.describe() if holder is not None else "unreadable lock file",
                )
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            who = holder.describe() if holder is not None else "a run that is starting"
            raise OutputFolderError(
                f"{folder} is in use by another run ({who}). Wait for it to finish or pass another --output_dir "
                f"(if that run is gone, delete {path})."
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(me), f)
        return path
    raise OutputFolderError(f"Could not take the lock {path}: another run keeps creating it.")


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool) -> None:
    """Refuse an output path that is a file, or an existing folder with files unless overwriting or resuming.

    Raises:
        OutputFolderError: with the flags that would make the run go ahead.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputFolderError(f"--output_dir {output_dir} is a file, not a folder: pass a folder path.")
    if overwrite or resuming or not os.path.isdir(output_dir):
        return
    present = sorted(e for e in os.listdir(output_dir) if e not in (LOCK_NAME, OLD_LOCK_NAME))
    if present:
        listed = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        resume = (
            "--resume_from_checkpoint true to continue its latest checkpoint"
            if any(e.startswith("checkpoint-") for e in present)
            else "--resume_from_checkpoint FOLDER to continue a run"
        )
        raise OutputFolderError(
            f"--output_dir {output_dir} already holds files ({listed}). Pass --overwrite_output_dir to write into "
            f"it anyway, {resume}, or another --output_dir."
        )


def existing_dirs(path: str) -> set[str]:
    """Every folder at or below ``path`` and above it (up to the root) that exists now."""
    path = os.path.abspath(path)
    found = {p for p in _ancestors(path) if os.path.isdir(p)}
    if os.path.isdir(path):
        found.update(os.path.abspath(os.path.join(root, d)) for root, dirs, _ in os.walk(path) for d in dirs)
    return found


def _ancestors(path: str) -> list[str]:
    out = [path]
    while os.path.dirname(out[-1]) != out[-1]:
        out.append(os.path.dirname(out[-1]))
    return out


def remove_new_empty_dirs(path: str, existed: set[str]) -> list[str]:
    """Remove the folders at, below and above ``path`` that are empty and not in ``existed``; return them."""
    path = os.path.abspath(path)
    removed = []
    if os.path.isdir(path):
        for root, _, _ in sorted(os.walk(path, topdown=False), key=lambda w: -len(w[0])):
            root = os.path.abspath(root)
            if root not in existed and not os.listdir(root):
                os.rmdir(root)
                removed.append(root)
    for p in _ancestors(path)[1:]:
        if p in existed or not os.path.isdir(p) or os.listdir(p):
            break
        os.rmdir(p)
        removed.append(p)
    return removed


def _is_main_process() -> bool:
    """Rank 0 of an ``accelerate launch``/``torchrun`` run, or a single process."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


@contextlib.contextmanager
def guarded_output_dir(
    output_dir: str, overwrite: bool = False, resuming: bool = False, existed: set[str] | None = None
) -> Iterator[None]:
    """Check the output folder, lock it for the body, and tidy up after a failure.

    On the main process the folder is created and ``LOCK_NAME`` written in it; the lock is removed when the body
    ends, however it ends. When the body raises, the folders it created and left empty are removed too.

    Args:
        output_dir, overwrite, resuming: the folder and the flags that allow writing into a folder with files.
        existed: the folders that existed before the run began (default: now); those are never removed.

    Raises:
        OutputFolderError: a file path, a folder with files (see :func:`check_output_dir`), or a folder in use.
    """
    if not _is_main_process():
        check_output_dir(output_dir, overwrite, resuming)
        yield
        return
    check_output_dir(output_dir, overwrite=True, resuming=False)  # a file path
    existed = existing_dirs(output_dir) if existed is None else existed
    lock = None
    try:
        os.makedirs(output_dir, exist_ok=True)
        lock = acquire_lock(output_dir)  # first: a folder in use names the run using it
        check_output_dir(output_dir, overwrite, resuming)
        yield
    except BaseException:
        _release(lock)
        lock = None
        for p in remove_new_empty_dirs(output_dir, existed):
            logger.info("Removed the empty folder %s left by the failed run.", p)
        raise
    finally:
        _release(lock)


def _release(lock: str | None) -> None:
    if lock is not None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)


def chance_level(num_classes: int) -> float:
    """Accuracy of guessing: one over the number of classes."""
    return 1.0 / max(1, num_classes)


def at_chance(accuracy: float, num_classes: int) -> bool:
    """Whether an accuracy is within a tenth of the way from guessing to perfect (0.19 for 10 classes)."""
    c = chance_level(num_classes)
    return accuracy < c + 0.1 * (1.0 - c)


def warn_if_teacher_at_chance(trainer, dataset, num_classes: int) -> float | None:
    """Evaluate the teacher on the first :data:`TEACHER_CHECK_ROWS` rows of ``dataset``; warn loudly when its
    accuracy is at chance level (random or mismatched weights, or labels in another order). Returns the accuracy
    (None without a teacher or a dataset)."""
    if getattr(trainer, "teacher", None) is None or dataset is None or len(dataset) == 0:
        return None
    rows = torch.utils.data.Subset(dataset, range(min(TEACHER_CHECK_ROWS, len(dataset))))
    accuracy = float(trainer.evaluate_teacher(rows)["accuracy"])
    if at_chance(accuracy, num_classes):
        logger.warning(
            "!!! The teacher scores %.4f on %d rows, the level of guessing (%.4f for %d classes): it is untrained, "
            "or its labels do not match the dataset's. Distilling it teaches the student nothing; check --teacher, "
            "--teacher_weights and the dataset. !!!",
            accuracy,
            len(rows),
            chance_level(num_classes),
            num_classes,
        )
    return accuracy


__all__ = [
    "LOCK_NAME",
    "LockHolder",
    "OutputFolderError",
    "acquire_lock",
    "at_chance",
    "check_output_dir",
    "guarded_output_dir",
    "is_stale",
    "read_lock",
    "remove_new_empty_dirs",
    "warn_if_teacher_at_chance",
]
