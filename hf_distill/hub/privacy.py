"""What must never leave the machine: a Hub token, the host name, the local paths; found in names and in bytes.

Everything hf_distill uploads passes :func:`find_private` first (a push that would publish a secret is refused), and
the names the card and the summary print pass :func:`public_name` (a local path becomes its last component; see
:func:`public_summary`). The
TensorBoard logs are the one kind of file written by another library that goes up with the model; their host- and
pid-bearing file names are rewritten by :func:`public_event_path` and their records that name a local path or the
host are dropped by :func:`scrub_event_file` (the scalars stay).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import struct
from collections.abc import Iterable, Mapping

from ..redact import redact_text
from .shipped import SOURCE_ROOT
from .summary import DistillationSummary

#: TensorBoard event files: ``events.out.tfevents.<time>.<host>.<pid>.<n>`` (the name TensorBoard looks for)
EVENT_FILE = re.compile(r"^events\.out\.tfevents\.(?P<time>\d+)\.(?P<rest>.+)$")
#: upstream's default TensorBoard folder ``runs/<Mon01_12-00-00>_<host>``
RUN_FOLDER = re.compile(r"^(?P<time>[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2})_.+$")
#: host names this short or this generic would match ordinary words, so they are not searched for
_GENERIC_HOSTS = {"localhost", "localhost.localdomain", ""}


def host_name() -> str | None:
    """This machine's name when it is specific enough to search for (None for ``localhost`` or under 4 letters)."""
    host = socket.gethostname()
    return None if host in _GENERIC_HOSTS or len(host) < 4 else host


def private_strings(folder: str | os.PathLike | None = None, token: str | None = None) -> dict[str, str]:
    """What a published file must not hold, by what it is: the host name, the model folder's absolute path, the
    working directory, the home folder, the hf_distill checkout, and ``token``.

    Args:
        folder: the model folder being published.
        token: the Hub token in use.

    Returns:
        Description to string (generic entries such as ``/`` are left out).
    """
    paths = {
        "the working directory": os.getcwd(),
        "the home folder": os.path.expanduser("~"),
        "the hf_distill installation": str(SOURCE_ROOT),
    }
    if folder is not None:
        paths["the model folder's path"] = os.path.abspath(folder)
        paths["the model folder's real path"] = os.path.realpath(folder)
    out = {what: p.rstrip(os.sep) for what, p in paths.items() if len(p.rstrip(os.sep)) > 1}
    host = host_name()
    if host:
        out["the host name"] = host
    if token:
        out["the Hub token"] = str(token)
    return out


def _host_pattern(host: str) -> re.Pattern[bytes]:
    # a whole word: a host "gpu7" must not match inside "gpu77" or a longer name
    return re.compile(rb"(?<![A-Za-z0-9_-])" + re.escape(host.encode()) + rb"(?![A-Za-z0-9_-])")


def find_private(data: bytes, private: Mapping[str, str]) -> list[str]:
    """What of ``private`` (and any Hub-token-looking string) ``data`` holds.

    Args:
        data: the bytes of a file (or a file name, encoded).
        private: from :func:`private_strings`.

    Returns:
        The descriptions found (empty: nothing).
    """
    found = []
    for what, needle in private.items():
        hit = _host_pattern(needle).search(data) if what == "the host name" else needle.encode() in data
        if hit:
            found.append(what)
    text = data.decode("latin-1")
    if "the Hub token" not in found and redact_text(text) != text:
        found.append("a Hub token")
    return found


def looks_local(reference: str) -> bool:
    """Whether a model or dataset reference names a local file or folder rather than a Hub id."""
    s = str(reference)
    return os.path.isabs(s) or s.startswith((".", "~")) or os.path.exists(s) or s.count("/") > 1 or "\\" in s


def public_name(reference: str | None) -> str | None:
    """How a model or dataset is named in anything published: a Hub id as it is, a local path by its last part."""
    if not reference:
        return None
    s = str(reference).rstrip("/\\")
    return os.path.basename(os.path.normpath(os.path.expanduser(s))) if looks_local(s) else s


def dataset_reference(reference: str | None) -> tuple[str | None, str | None]:
    """(Hub dataset id, local dataset name) of the dataset a run was given: one of the two is set.

    A local folder or file is named by its last part and never becomes an id; a Hub cache snapshot
    (``.../datasets--org--name/snapshots/<sha>``) is the Hub dataset it caches.
    """
    if not reference:
        return None, None
    m = re.search(r"datasets--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]", str(reference) + "/")
    if m:
        return f"{m.group(1)}/{m.group(2)}", None
    if looks_local(reference):
        return None, public_name(reference)
    return str(reference), None


def _hub_model_id(name: str | None) -> str | None:
    # a name with a namespace that is no local path: what a Hub model id looks like
    return name if name and name.count("/") == 1 and not looks_local(name) else None


def public_summary(summary: DistillationSummary) -> DistillationSummary:
    """``summary`` with nothing of the local machine in it: a local dataset given as ``dataset`` becomes
    ``local_dataset`` (by name); local paths of the teacher(s), the initialization and the datasets become their
    last part; ``base_model`` holds a Hub id or nothing.

    Args:
        summary: the summary (not modified).

    Returns:
        A copy.
    """
    s = dataclasses.replace(summary)
    if s.dataset:
        hub_id, local = dataset_reference(s.dataset)
        s.dataset, s.local_dataset = hub_id, local or public_name(s.local_dataset)
    else:
        s.local_dataset = public_name(s.local_dataset)
    s.dataset_asserted = bool(s.dataset_asserted and s.dataset and s.local_dataset)
    if s.base_model and looks_local(s.base_model):
        s.init_checkpoint, s.base_model = s.init_checkpoint or public_name(s.base_model), None
    s.init_checkpoint = public_name(s.init_checkpoint)
    s.teacher_id = s.teacher_id or _hub_model_id(s.teacher)
    s.teacher = public_name(s.teacher)
    s.teachers = [{**t, "name": public_name(t.get("name"))} for t in s.teachers]
    return s


def public_event_path(path_in_repo: str) -> str:
    """A TensorBoard log's path without the host name and pid upstream puts in the names.

    ``runs/May01_12-00-00_myhost/events.out.tfevents.1714560000.myhost.1234.0`` becomes
    ``runs/May01_12-00-00/events.out.tfevents.1714560000.0``; TensorBoard and the Hub find it by the ``tfevents``
    part of the name.
    """
    parts = path_in_repo.split("/")
    m = EVENT_FILE.match(parts[-1])
    if m:
        parts[-1] = f"events.out.tfevents.{m['time']}.{m['rest'].rsplit('.', 1)[-1]}"
    return "/".join(RUN_FOLDER.sub(r"\g<time>", p) for p in parts)


def is_event_file(name: str) -> bool:
    """Whether a file name is a TensorBoard event file."""
    return EVENT_FILE.match(os.path.basename(name)) is not None


def event_records(data: bytes) -> list[bytes]:
    """The records of a TFRecord file (TensorBoard's event format), each with its framing.

    Each record is an 8-byte length, a 4-byte checksum of it, the data, and a 4-byte checksum of the data, so
    records can be dropped without touching the others.

    Raises:
        ValueError: a truncated record.
    """
    out, pos = [], 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("a truncated TensorBoard record")
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        end = pos + 12 + n + 4
        if end > len(data):
            raise ValueError("a truncated TensorBoard record")
        out.append(data[pos:end])
        pos = end
    return out


def scrub_event_file(data: bytes, private: Mapping[str, str]) -> bytes:
    """A TensorBoard event file without the records that hold something of ``private`` or a token.

    Upstream's TensorBoard callback writes the TrainingArguments and the model config as text records (the output
    folder's path among them); the scalars (losses, accuracies, learning rate) are in records of their own.

    Args:
        data: the event file.
        private: from :func:`private_strings`.

    Returns:
        The kept records, unchanged, in order.
    """
    return b"".join(r for r in event_records(data) if not find_private(r, private))


def private_in_names(paths: Iterable[str], private: Mapping[str, str]) -> dict[str, list[str]]:
    """The paths whose names hold something of ``private`` (a host-named TensorBoard folder, ...)."""
    out = {}
    for p in paths:
        found = find_private(p.encode(), private)
        if found:
            out[p] = found
    return out


__all__ = [
    "dataset_reference",
    "event_records",
    "find_private",
    "host_name",
    "is_event_file",
    "looks_local",
    "private_in_names",
    "private_strings",
    "public_event_path",
    "public_name",
    "public_summary",
    "scrub_event_file",
]
