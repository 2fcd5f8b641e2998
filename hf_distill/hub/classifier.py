"""Load an image classifier the way a Hub user does: a local folder or a Hub snapshot, with ``from_pretrained``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ..training.checkpoints import partial_export, saved_model_problem

logger = logging.getLogger(__name__)


class ModelNotFoundError(ValueError):
    """A model reference that is neither a model folder nor a model repository on the Hub."""


class IncompleteFolderError(ModelNotFoundError):
    """A model folder whose save did not finish (a missing or empty ``config.json``, missing or empty weights)."""


def check_saved_model(folder: str | os.PathLike) -> None:
    """Refuse a model folder that cannot be loaded, in one line saying how to recover.

    Raises:
        ModelNotFoundError: no ``config.json``.
        IncompleteFolderError: see :func:`hf_distill.training.checkpoints.saved_model_problem`.
    """
    if not os.path.isfile(os.path.join(str(folder), "config.json")) and not partial_export(str(folder)):
        raise ModelNotFoundError(
            f"{str(folder)!r} is a folder but not a model folder: it has no config.json."
        )
    problem = saved_model_problem(folder)
    if problem:
        raise IncompleteFolderError(
            f"{folder} is an incomplete model folder: {problem}, as a run stopped during its final save leaves it. "
            "Resume the run (the same command with --resume_from_checkpoint true) or save the model there again "
            "(trainer.save_model() or model.save_pretrained()), then retry."
        )


def resolve_model(
    model: str,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
) -> str:
    """A local folder for a model reference: the folder itself, or a snapshot downloaded from the Hub.

    Args:
        model: a model folder or a Hub model id.
        revision: branch, tag or commit of a Hub model.
        token: Hub token.
        endpoint: Hub endpoint (default: ``HF_ENDPOINT`` / huggingface.co).
        cache_dir: Hub cache folder.

    Returns:
        The local folder.

    Raises:
        ModelNotFoundError: no such folder and no such model repository (or it cannot be reached).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    if os.path.isdir(model):
        check_saved_model(model)
        return model
    if os.path.exists(model) or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(f"Model {model!r} does not exist: there is no such folder.")
    try:
        validate_repo_id(model)
    except HFValidationError as e:
        raise ModelNotFoundError(
            f"Model {model!r} is neither a local folder nor a valid Hub model id ({e})."
        ) from e
    where = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        return snapshot_download(
            repo_id=model,
            revision=revision,
            token=token,
            endpoint=endpoint,
            cache_dir=cache_dir,
            repo_type="model",
        )
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"Model {model!r} does not exist: it is not a local folder, and the Hub at {where} has no model "
            "repository with that id (if it is private or gated, log in with `hf auth login` or set HF_TOKEN)."
        ) from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(
            f"Model {model!r} has no revision {revision!r} on the Hub at {where}."
        ) from e
    except LocalEntryNotFoundError as e:
        raise ModelNotFoundError(
            f"Model {model!r} is not a local folder and could not be downloaded from {where} "
            f"({str(e).splitlines()[0]}). Check the connection, unset HF_HUB_OFFLINE, or pass a local folder."
        ) from e


@dataclass
class LoadedModel:
    """A classifier loaded for evaluation, with its processor and where it came from."""

    model: Any
    processor: Any
    folder: str
    reference: str


def load_classifier(
    model: str,
    trust_remote_code: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> LoadedModel:
    """Load an image classifier and its image processor with ``from_pretrained``.

    CIFAR-zoo models use hf_distill's own classes (registered with the Auto classes); any other custom code needs
    ``trust_remote_code=True``.

    Args:
        model: a model folder or Hub model id.
        trust_remote_code: passed to ``from_pretrained`` (None: transformers' default).
        revision: Hub revision.
        token: Hub token.
        endpoint: Hub endpoint.

    Returns:
        A :class:`LoadedModel` (the model in eval mode).

    Raises:
        ModelNotFoundError: see :func:`resolve_model`.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from ..models import modeling_cifar  # noqa: F401  (zoo classes without remote code)

    folder = resolve_model(model, revision=revision, token=token, endpoint=endpoint)
    kw = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    try:
        net = AutoModelForImageClassification.from_pretrained(folder, **kw).eval()
    except OSError as e:  # a file from_pretrained needs is missing or unreadable: one line, not a traceback
        raise ModelNotFoundError(f"{model} could not be loaded: {str(e).strip().splitlines()[0]}") from e
    try:
        processor = AutoImageProcessor.from_pretrained(folder, **kw)
    except (OSError, ValueError, KeyError) as e:
        logger.warning("No image processor in %s (%s); using the model config's normalization.", folder, e)
        processor = None
    return LoadedModel(net, processor, folder, model)


def classification_pipeline(loaded: LoadedModel, device: str | int | None = None) -> Any:
    """A transformers ``image-classification`` pipeline for a loaded model (for ``evaluate``'s evaluator).

    Args:
        loaded: from :func:`load_classifier`.
        device: pipeline device (default: CPU).

    Returns:
        The pipeline.
    """
    from transformers import pipeline

    return pipeline(
        "image-classification", model=loaded.model, image_processor=loaded.processor, device=device or "cpu"
    )
