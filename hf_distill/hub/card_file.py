"""Existing model cards: read with a clear error for broken metadata, merged without losing what they hold.

Every write goes through :func:`save_card` (a temporary file, then an atomic replace), and only after the new card
has been built, so a card with malformed metadata is never touched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard

from .privacy import looks_local
from .summary import TASK

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
#: Metadata keys that hold the ``model-index``: merged result by result, never copied as a whole.
_INDEX_KEYS = ("model-index", "model_name", "eval_results")
#: ``model-index`` metric types that earlier versions wrote for other models than the student
LEGACY_METRIC_TYPES = {
    "teacher_accuracy",
    "teacher_top5_accuracy",
    "baseline_accuracy",
    "baseline_top5_accuracy",
}
#: the metric types hf_distill writes (or wrote): an evaluation again replaces them
OWN_METRIC_TYPES = {"accuracy", "top5_accuracy"} | LEGACY_METRIC_TYPES


class CardError(ValueError):
    """A model card that cannot be read or updated; the message says which file and why."""


def read_card(path: str | os.PathLike) -> ModelCard:
    """Read a model card file, with a clear error for malformed YAML metadata.

    Args:
        path: the ``README.md``.

    Returns:
        The card.

    Raises:
        CardError: the YAML header cannot be parsed or is not a mapping.
    """
    return parse_card(Path(path).read_text(encoding="utf-8"), str(path))


def parse_card(text: str, where: str = "model card") -> ModelCard:
    """Parse card text (see :func:`read_card`).

    Args:
        text: the whole card.
        where: a name for error messages.

    Returns:
        The card.

    Raises:
        CardError: malformed metadata.
    """
    try:
        return ModelCard(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise CardError(
            f"The YAML metadata of {where} is malformed{loc}: {getattr(e, 'problem', None) or e}. Fix the header "
            "between the '---' lines; the file was left untouched."
        ) from e
    except (ValueError, TypeError) as e:
        raise CardError(f"The metadata of {where} cannot be read: {e}. The file was left untouched.") from e


def save_card(card: ModelCard, path: str | os.PathLike) -> str:
    """Write ``card`` to ``path`` atomically (a reader never sees half a card).

    Returns:
        The path written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    card.save(tmp)
    os.replace(tmp, path)
    return str(path)


def result_key(result: EvalResult) -> tuple[Any, ...]:
    """What makes one ``model-index`` entry: (task, dataset, config, split)."""
    return (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split)


def merge_results(base: Iterable[EvalResult], updates: Iterable[EvalResult]) -> list[EvalResult]:
    """``base`` with the entries of ``updates`` in place of the ones they evaluate again.

    An entry is a (task, dataset, config, split): the new results of an entry replace every result hf_distill wrote
    for it (:data:`OWN_METRIC_TYPES`), at the place of the first one; a metric someone else added to the entry is
    kept under the entry's new display name. Entries that ``base`` lacks are appended.
    """
    updates = list(updates)
    names = {result_key(u): u.dataset_name for u in updates}
    out: list[EvalResult] = []
    placed: set[tuple[Any, ...]] = set()
    for old in base:
        key = result_key(old)
        if key in names and old.metric_type in OWN_METRIC_TYPES:
            if key not in placed:
                out += [u for u in updates if result_key(u) == key]
                placed.add(key)
            continue
        out.append(old)
    out += [u for u in updates if result_key(u) not in placed]
    for r in out:
        r.dataset_name = names.get(result_key(r), r.dataset_name)
    return out


def public_results(results: Iterable[EvalResult]) -> list[EvalResult]:
    """An hf_distill card's results without what earlier versions put there wrongly: the teacher's and the
    baseline's metrics, and entries under a local dataset path."""
    return [
        r
        for r in results
        if r.metric_type not in LEGACY_METRIC_TYPES and not looks_local(r.dataset_type or "")
    ]


def merge_eval_results(
    card: ModelCard, results: Iterable[EvalResult], model_name: str | None = None
) -> ModelCard:
    """Add ``results`` to the card's ``model-index``: an entry for the same task, dataset, config and split is replaced
    (see :func:`merge_results`); every other entry, metadata key and the body are kept.

    Args:
        card: the card (modified in place).
        results: the new results.
        model_name: name for the ``model-index`` when the card has none.

    Returns:
        The same card.
    """
    results = list(results)
    if not results:
        return card
    card.data.eval_results = merge_results(card.data.eval_results or [], results)
    if not card.data.model_name:
        card.data.model_name = model_name or "model"
    return card


def merge_cards(
    old_text: str, new: ModelCard, marker: str, model_name: str, where: str = "model card"
) -> ModelCard:
    """A regenerated card merged with the one it replaces, so nothing a user or an evaluation added is lost.

    * a card written by hf_distill (its text holds ``marker``): ``new`` replaces it; the old ``model-index`` results
      that ``new`` lacks (e.g. from ``recipes/evaluate.py --update-card``) and the old metadata keys that ``new``
      lacks are carried over (for the same metric, the new value wins);
    * any other card: its body and metadata are kept; ``new``'s metadata keys that it lacks are added and ``new``'s
      results are merged into its ``model-index``.

    Args:
        old_text: the existing card's text.
        new: the freshly rendered card.
        marker: the line every card written by hf_distill holds.
        model_name: ``model-index`` name when neither card has one.
        where: a name for error messages.

    Returns:
        The card to write.

    Raises:
        CardError: the old card's metadata is malformed.
    """
    old = parse_card(old_text, where)
    if marker in old_text:
        keep, add = new, old
        keep.data.eval_results = (
            merge_results(public_results(old.data.eval_results or []), new.data.eval_results or []) or None
        )
        if keep.data.eval_results and not keep.data.model_name:
            keep.data.model_name = old.data.model_name or model_name
    else:
        logger.info("%s was not written by hf_distill: keeping its text, adding metadata and results.", where)
        keep, add = old, new
        merge_eval_results(keep, new.data.eval_results or [], model_name)
    present = set(keep.data.to_dict())
    for k, v in add.data.to_dict().items():
        if k not in present and k not in _INDEX_KEYS:
            keep.data[k] = v
    return keep


def update_card_file(
    path: str | os.PathLike,
    results: Iterable[EvalResult],
    model_name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ModelCard:
    """Merge evaluation results (and optional metadata keys) into a card file, keeping everything else.

    A missing file gets a minimal card.

    Args:
        path: the ``README.md``.
        results: new ``model-index`` results.
        model_name: ``model-index`` name when the card has none (default: the folder name).
        metadata: extra top-level metadata to set (existing keys are overwritten, others kept).

    Returns:
        The updated card.

    Raises:
        CardError: malformed YAML metadata in the existing file.
    """
    path = Path(path)
    name = model_name or path.resolve().parent.name
    if path.is_file():
        card = read_card(path)
    else:
        card = ModelCard(f"---\npipeline_tag: {TASK}\n---\n\n# {name}\n")
    merge_eval_results(card, results, name)
    for k, v in (metadata or {}).items():
        card.data[k] = v
    save_card(card, path)
    return card
