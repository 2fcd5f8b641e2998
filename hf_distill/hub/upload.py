"""What of a model folder goes to the Hub, how it compares with the repository, and the one commit that sends it.

:func:`upload_plan` decides file by file (:func:`is_uploaded`): checkpoints, the init stage's scratch folder, the
mutual-learning peers (each its own repository), ``training_args.bin``/``.json`` (they hold the run's local paths),
locks, and every hidden (``.*``) or private (``_*``) file stay home; the Hub's Eval Results files
(``.eval_results/*.yaml``) and the TensorBoard logs (``runs/``, names without host and pid) go up.

:func:`commit_plan` uploads the plan and deletes what must never be in a repository (:func:`must_not_be_in_repo`,
e.g. a lock an older version uploaded) in a single commit: an interrupted upload leaves the repository as it was.
A Hub that cannot be reached, or that refuses, is one :class:`HubError` line.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi

from ..training.outputs import TRAINING_ARGS_JSON
from .privacy import find_private, is_event_file, public_event_path, scrub_event_file

T = TypeVar("T")

#: the Hub's Eval Results folder (``huggingface_hub.constants.EVAL_RESULTS_FOLDER``): the one hidden folder uploaded
EVAL_RESULTS_DIR = ".eval_results"
#: the file the Hub writes into every new repository; it is the Hub's, so it is never deleted
HUB_OWN_FILES = (".gitattributes",)
#: never uploaded, matched against every part of a path (besides hidden ``.*`` and private ``_*`` parts)
IGNORE_PATTERNS = [
    "checkpoint-*",
    "tmp-checkpoint-*",
    "last-checkpoint",
    "init_stage",
    "peer[0-9]*",
    "__pycache__",
    "training_args.bin",
    TRAINING_ARGS_JSON,
    "*.lock",
    "*.tmp",
    "_*",
    ".*",
]
#: never in a repository: pushing deletes them where an earlier push (of an older version, or upstream's
#: ``Trainer.push_to_hub``) left them; checkpoints and peers a user may have pushed on purpose are left alone
NEVER_IN_REPO = ["training_args.bin", TRAINING_ARGS_JSON, "*.lock", "_*", ".*"]
#: the first bytes of a safetensors file give the length of its JSON header; only the header can hold text
_SAFETENSORS_HEADER = 8


class HubError(ValueError):
    """The Hub could not be reached or refused a request; the message says whether anything changed."""


def _matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(part, pat) for part in path.split("/") for pat in patterns)


def _is_eval_results_file(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and parts[0] == EVAL_RESULTS_DIR and parts[1].endswith(".yaml")


def is_uploaded(path: str) -> bool:
    """Whether a file of a model folder (a ``/``-separated relative path) goes to the Hub."""
    if _is_eval_results_file(path):
        return not path.split("/")[1].startswith((".", "_"))
    return not _matches(path, IGNORE_PATTERNS)


def must_not_be_in_repo(path: str) -> bool:
    """Whether a file found in a Hub repository must be deleted from it (see :data:`NEVER_IN_REPO`)."""
    if path in HUB_OWN_FILES or _is_eval_results_file(path):
        return False
    return _matches(path, NEVER_IN_REPO)


@dataclass(frozen=True)
class UploadFile:
    """One file of the upload: where it goes in the repository, and its bytes (read from ``local_path`` unless a
    rewritten copy is held in ``data``)."""

    path_in_repo: str
    local_path: str
    data: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.local_path)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.local_path, "rb") as f:
            return f.read()

    def text_part(self) -> bytes:
        """The bytes that could hold text: a safetensors file's JSON header, any other file whole."""
        if self.data is None and self.local_path.endswith(".safetensors"):
            with open(self.local_path, "rb") as f:
                head = f.read(_SAFETENSORS_HEADER)
                n = int.from_bytes(head, "little") if len(head) == _SAFETENSORS_HEADER else 0
                return head + f.read(n)
        return self.read()

    def git_oid(self) -> str:
        """The git blob id of the content (what the Hub reports for a regular file)."""
        data = self.read()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def sha256(self) -> str:
        """The sha256 of the content (what the Hub reports for an LFS file)."""
        return hashlib.sha256(self.read()).hexdigest()

    def operation(self) -> CommitOperationAdd:
        return CommitOperationAdd(self.path_in_repo, self.data if self.data is not None else self.local_path)


def upload_plan(folder: str | os.PathLike, private: Mapping[str, str]) -> list[UploadFile]:
    """The files of ``folder`` that go to the Hub, by path in the repository.

    Args:
        folder: the model folder.
        private: from :func:`hf_distill.hub.privacy.private_strings` (scrubbed from the TensorBoard logs).

    Returns:
        The files, sorted by path.
    """
    folder = str(folder)
    out = []
    for root, dirs, files in os.walk(folder):
        rel_root = os.path.relpath(root, folder).replace(os.sep, "/")
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [
            d for d in dirs if d == EVAL_RESULTS_DIR and not rel_root or not _matches(d, IGNORE_PATTERNS)
        ]
        for name in files:
            rel = rel_root + name
            if not is_uploaded(rel):
                continue
            path = os.path.join(root, name)
            if is_event_file(name):
                with open(path, "rb") as f:
                    out.append(UploadFile(public_event_path(rel), path, scrub_event_file(f.read(), private)))
            else:
                out.append(UploadFile(rel, path))
    return sorted(out, key=lambda f: f.path_in_repo)


def private_findings(plan: list[UploadFile], private: Mapping[str, str]) -> dict[str, list[str]]:
    """What of ``private`` each planned file holds, in its name or its content (empty: nothing)."""
    out = {}
    for f in plan:
        found = find_private(f.path_in_repo.encode() + b"\n" + f.text_part(), private)
        if found:
            out[f.path_in_repo] = found
    return out


# -- the Hub -----------------------------------------------------------------------------------------------------
def _unreachable(e: BaseException) -> bool:
    # huggingface_hub's HTTP client raises TransportError subclasses (httpx and its successor); older versions,
    # built on requests, and offline mode raise ConnectionError (an OSError)
    return isinstance(e, OSError) or any(c.__name__ == "TransportError" for c in type(e).__mro__)


def hub_call(what: Callable[[], T], endpoint: str, changed: str = "nothing was changed on it") -> T:
    """Run one Hub request, turning a network failure or a refusal into one :class:`HubError` line.

    Args:
        what: the request.
        endpoint: the Hub's address, for the message.
        changed: what the message says about the repository's state.

    Returns:
        The request's result.

    Raises:
        HubError: the Hub could not be reached, or answered with an error.
    """
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        return what()
    except OfflineModeIsEnabled as e:
        raise HubError(
            f"HF_HUB_OFFLINE is set, so the Hub was not contacted ({changed}): unset it to push."
        ) from e
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"The Hub at {endpoint} refused the request ({first}); {changed}.") from e
    except Exception as e:
        if not _unreachable(e):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(
            f"The Hub at {endpoint} could not be reached ({reason}); {changed}. Check the connection and "
            "HF_ENDPOINT, then run the same command again."
        ) from e


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub's address: ``endpoint``, else ``HF_ENDPOINT``, else huggingface.co."""
    from huggingface_hub import constants

    return endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


@dataclass
class RepoState:
    """What a repository holds at a revision: path to (size, git blob id, LFS sha256 or None). ``exists`` is
    False for a repository (or branch) that is not there yet."""

    exists: bool
    files: dict[str, tuple[int, str, str | None]]


def repo_state(api: HfApi, repo_id: str, revision: str | None, endpoint: str) -> RepoState:
    """The files of a Hub repository (empty and ``exists=False`` when it does not exist).

    Raises:
        HubError: the Hub could not be reached.
    """
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    def files() -> dict[str, tuple[int, str, str | None]]:
        out = {}
        for entry in api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type="model"):
            if hasattr(entry, "blob_id"):
                lfs = getattr(entry, "lfs", None)
                sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
                out[entry.path] = (entry.size, entry.blob_id, sha)
        return out

    try:
        return RepoState(True, hub_call(files, endpoint))
    except HubError as e:
        if isinstance(e.__cause__, (RepositoryNotFoundError, RevisionNotFoundError)):
            return RepoState(False, {})
        raise


def file_status(f: UploadFile, state: RepoState) -> str:
    """``new``, ``changed`` or ``same`` against the repository."""
    held = state.files.get(f.path_in_repo)
    if held is None:
        return "new"
    size, oid, sha = held
    if size != f.size:
        return "changed"
    same = f.sha256() == sha if sha else f.git_oid() == oid
    return "same" if same else "changed"


def commit_plan(
    api: HfApi,
    repo_id: str,
    plan: list[UploadFile],
    delete: list[str],
    endpoint: str,
    commit_message: str,
    revision: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Upload ``plan`` and delete ``delete`` from the repository in one commit.

    Raises:
        HubError: the Hub could not be reached or refused; the repository was left as it was.
    """
    operations: list[Any] = [f.operation() for f in plan]
    operations += [CommitOperationDelete(path) for path in delete]
    return hub_call(
        lambda: api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        ),
        endpoint,
        changed=f"no commit was made, {repo_id} is as it was",
    )


__all__ = [
    "EVAL_RESULTS_DIR",
    "IGNORE_PATTERNS",
    "NEVER_IN_REPO",
    "HubError",
    "RepoState",
    "UploadFile",
    "commit_plan",
    "file_status",
    "hub_call",
    "hub_endpoint",
    "is_uploaded",
    "must_not_be_in_repo",
    "private_findings",
    "repo_state",
    "upload_plan",
]
