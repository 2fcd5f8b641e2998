"""The upload of a complete model folder, with every check that keeps it safe, and its dry run.

:func:`push_folder` is the one upload of both paths (``DistillationTrainer.push_to_hub`` through the Hub callback,
and ``recipes/push.py``): it refuses an incomplete folder (:func:`check_folder`), code hf_distill did not write
(:mod:`hf_distill.hub.code_check`) and any file holding a token, the host name or a local path
(:mod:`hf_distill.hub.privacy`), then sends :func:`hf_distill.hub.upload.upload_plan` and deletes what must never be in
a repository in one commit. :func:`plan_push` says what it would do, without doing it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from huggingface_hub import CommitInfo, HfApi
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..training.checkpoints import saved_model_problem
from .card_file import CARD_NAME
from .code_check import check_code
from .collect import CIFAR_MODEL_TYPE
from .privacy import private_in_names, private_strings, public_event_path
from .upload import (
    IGNORE_PATTERNS,
    HubError,
    RepoState,
    UploadFile,
    commit_plan,
    file_status,
    hub_call,
    hub_endpoint,
    must_not_be_in_repo,
    private_findings,
    repo_state,
    upload_plan,
)

PROCESSOR_NAME = "preprocessor_config.json"


class PublishError(ValueError):
    """A model folder that cannot be published as it is; the message says what is missing."""


def read_json(path: str) -> dict[str, Any]:
    """A JSON file's content."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def has_weights(folder: str) -> bool:
    """Whether the folder holds safetensors weights (one file or a sharded index)."""
    return os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)) or os.path.isfile(
        os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    )


def check_folder(folder: str | os.PathLike) -> list[str]:
    """What a model folder lacks to be a complete Hub repository (empty list: nothing).

    Args:
        folder: the model folder.

    Returns:
        Human-readable problems.
    """
    folder = str(folder)
    problems = []
    config_path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config_path):
        return [f"no {CONFIG_NAME}"]
    incomplete = saved_model_problem(folder)
    if incomplete and CONFIG_NAME in incomplete:  # a save cut short: the config cannot be read
        return [incomplete]
    if not has_weights(folder):
        problems.append(f"no {SAFE_WEIGHTS_NAME}")
    elif incomplete:  # an empty weights file
        problems.append(incomplete)
    config = read_json(config_path)
    timm_format = "pretrained_cfg" in config and "architecture" in config
    if not timm_format and not os.path.isfile(os.path.join(folder, PROCESSOR_NAME)):
        problems.append(f"no image processor ({PROCESSOR_NAME})")
    if config.get("model_type") == CIFAR_MODEL_TYPE:
        code = [v.split(".")[0] + ".py" for v in (config.get("auto_map") or {}).values()]
        if not code:
            problems.append("a CIFAR-zoo model without auto_map (it would need hf_distill installed)")
        problems += [f"missing model code {c}" for c in code if not os.path.isfile(os.path.join(folder, c))]
    if not os.path.isfile(os.path.join(folder, CARD_NAME)):
        problems.append(f"no model card ({CARD_NAME})")
    return problems


@dataclass
class PushPlan:
    """What a push sends: each file with its status against the repository (``new``, ``changed``, ``same``, or
    ``-`` when there is no repository to compare with), and what it deletes from the repository."""

    folder: str
    files: list[tuple[UploadFile, str]]
    delete: list[str]
    repo: RepoState | None

    @property
    def upload(self) -> list[UploadFile]:
        return [f for f, _ in self.files]


def checked_upload(
    folder: str | os.PathLike, token: str | None = None, allow_foreign_code: bool = False, check: bool = True
) -> tuple[list[UploadFile], dict[str, str]]:
    """The files of ``folder`` to upload, after every check that keeps a push safe.

    Args:
        folder: the model folder.
        token: the Hub token in use (it must be in no file).
        allow_foreign_code: publish code hf_distill did not write.
        check: refuse an incomplete folder.

    Returns:
        (the upload plan, the private strings it was scanned for).

    Raises:
        PublishError: an incomplete folder, or a file holding a token, the host name or a local path.
        hf_distill.hub.code_check.ForeignCodeError: code hf_distill did not write.
    """
    if check:
        problems = check_folder(folder)
        if problems:
            raise PublishError(
                f"{folder} is not a complete model repository: {'; '.join(problems)}. "
                "Run hf_distill.hub.complete_folder (or recipes/push.py without --no_complete) first."
            )
    private = private_strings(folder, token)
    plan = upload_plan(folder, private)
    if not allow_foreign_code:
        check_code(folder, [f.path_in_repo for f in plan if f.path_in_repo.endswith(".py")])
    leaks = private_findings(plan, private)
    if leaks:
        where = "; ".join(f"{path} holds {', '.join(what)}" for path, what in leaks.items())
        raise PublishError(
            f"Refusing to upload what must stay on this machine: {where}. Remove it and push again."
        )
    return plan, private


def _stale(state: RepoState, plan: list[UploadFile], private: dict[str, str]) -> list[str]:
    """The repository's files that must go: never allowed there, or named after this machine."""
    planned = {f.path_in_repo for f in plan}
    named = private_in_names(state.files, private)
    # upstream's TensorBoard names carry the host and pid, however short the host name
    named.update({p: ["a host name"] for p in state.files if public_event_path(p) != p})
    return sorted(p for p in state.files if p not in planned and (must_not_be_in_repo(p) or p in named))


def plan_push(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    allow_foreign_code: bool = False,
    check: bool = True,
) -> PushPlan:
    """What :func:`push_folder` would do, without doing it (its dry run).

    Args:
        folder: the model folder.
        repo_id: the repository to compare with (None: no comparison).
        token, revision, endpoint: Hub access.
        allow_foreign_code: see :func:`push_folder`.
        check: see :func:`push_folder`.

    Returns:
        The :class:`PushPlan`.

    Raises:
        PublishError: see :func:`checked_upload`; HubError: the Hub could not be reached.
    """
    plan, private = checked_upload(folder, token, allow_foreign_code, check)
    if repo_id is None:
        return PushPlan(str(folder), [(f, "-") for f in plan], [], None)
    where = hub_endpoint(endpoint)
    state = repo_state(HfApi(endpoint=where, token=token), repo_id, revision, where)
    return PushPlan(
        str(folder), [(f, file_status(f, state)) for f in plan], _stale(state, plan, private), state
    )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    check: bool = True,
    allow_foreign_code: bool = False,
) -> CommitInfo:
    """Create the Hub repository (if needed) and upload a complete model folder in one commit.

    What goes up is :func:`hf_distill.hub.upload.upload_plan`'s (no checkpoints, locks, training arguments, hidden
    or private files; the Eval Results files and the TensorBoard logs without host names); files that must never be
    in a repository and that an earlier push left there are deleted in the same commit.

    Args:
        folder: the model folder (see :func:`complete_folder`).
        repo_id: ``namespace/name`` on the Hub.
        token: Hub token (default: the saved one / ``HF_TOKEN``).
        private: create the repository as private.
        revision: branch to push to.
        commit_message: commit message.
        create_pr: open a pull request instead of committing to the branch.
        endpoint: Hub endpoint (default: ``HF_ENDPOINT`` or huggingface.co).
        check: refuse to push an incomplete folder (see :func:`check_folder`).
        allow_foreign_code: publish ``.py`` files / an ``auto_map`` that hf_distill did not write.

    Returns:
        The :class:`huggingface_hub.CommitInfo` of the upload.

    Raises:
        PublishError: the folder is incomplete, or a file holds a secret or a local path (nothing is sent).
        hf_distill.hub.code_check.ForeignCodeError: code hf_distill did not write (nothing is sent).
        HubError: the Hub could not be reached or refused (the repository is as it was).
    """
    plan, private_data = checked_upload(folder, token, allow_foreign_code, check)
    where = hub_endpoint(endpoint)
    api = HfApi(endpoint=where, token=token)
    url = hub_call(lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"), where)
    state = repo_state(api, url.repo_id, revision, where)
    return commit_plan(
        api,
        url.repo_id,
        plan,
        _stale(state, plan, private_data),
        where,
        commit_message or "Upload distilled student with hf_distill",
        revision=revision,
        create_pr=create_pr,
    )


__all__ = [
    "IGNORE_PATTERNS",
    "PROCESSOR_NAME",
    "HubError",
    "PublishError",
    "PushPlan",
    "check_folder",
    "checked_upload",
    "has_weights",
    "plan_push",
    "push_folder",
    "read_json",
]
