"""The Hub's Eval Results files (``.eval_results/*.yaml``), written beside the card's ``model-index``.

The Hub reads a model's scores from YAML files in the repository's ``.eval_results/`` folder (its "Evaluation
Results" documentation; ``huggingface_hub.EvalResultEntry`` is the entry). hf_distill writes one file per evaluated
(dataset, config, split), named after them, with one entry per metric::

    # .eval_results/uoft-cs--cifar10--test.yaml
    - dataset: {id: uoft-cs/cifar10, task_id: accuracy}
      value: 0.9123
      date: '2025-01-15'
      notes: 'image-classification, split test, top-1 accuracy as a fraction of 1 ...'

A new evaluation of the same (dataset, config, split) rewrites its file, as it replaces its ``model-index`` entry.
Only results under a Hub dataset id are written (see :mod:`hf_distill.hub.metadata`).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable

import yaml
from huggingface_hub import EvalResult, EvalResultEntry
from huggingface_hub import eval_result_entries_to_yaml as entries_to_yaml

from .upload import EVAL_RESULTS_DIR

#: what each metric value means, for the entries' notes
METRIC_NOTES = {
    "accuracy": "top-1 accuracy as a fraction of 1",
    "top5_accuracy": "top-5 accuracy as a fraction of 1",
}


def eval_file_name(dataset: str, split: str | None, config: str | None = None) -> str:
    """The file of one (dataset, config, split): ``uoft-cs--cifar10--test.yaml``, ``...--test-first-64.yaml``."""
    parts = [dataset.replace("/", "--")] + ([config] if config else []) + [split or "unknown-split"]
    name = "--".join(parts).replace("[:", "-first-")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") + ".yaml"


def group_results(
    results: Iterable[EvalResult],
) -> dict[tuple[str, str | None, str | None], list[EvalResult]]:
    """Results by (dataset id, config, split), in their order."""
    out: dict[tuple[str, str | None, str | None], list[EvalResult]] = {}
    for r in results:
        out.setdefault((r.dataset_type, r.dataset_config, r.dataset_split), []).append(r)
    return out


def eval_entries(
    results: list[EvalResult], note: str | None = None, date: str | None = None
) -> list[EvalResultEntry]:
    """The Eval Results entries of one (dataset, config, split): one per metric.

    Args:
        results: ``model-index`` results of the same dataset, config and split.
        note: what else a reader must know (e.g. that a local copy was used), added to every entry's notes.
        date: ISO date of the evaluation (default: today).

    Returns:
        The entries.
    """
    date = date or datetime.date.today().isoformat()
    out = []
    for r in results:
        what = [r.task_type, f"split {r.dataset_split}"] + (
            [f"config {r.dataset_config}"] if r.dataset_config else []
        )
        what.append(METRIC_NOTES.get(r.metric_type, r.metric_name or r.metric_type))
        if note:
            what.append(note)
        out.append(
            EvalResultEntry(
                dataset_id=r.dataset_type,
                task_id=r.metric_type,
                value=r.metric_value,
                date=date,
                notes="; ".join(what),
            )
        )
    return out


def eval_result_files(results: Iterable[EvalResult], note: str | None = None) -> dict[str, str]:
    """The Eval Results files for ``results``: path in the repository to YAML text.

    Args:
        results: ``model-index`` results (under Hub dataset ids).
        note: see :func:`eval_entries`.

    Returns:
        ``{".eval_results/<name>.yaml": text}``.
    """
    return {
        f"{EVAL_RESULTS_DIR}/{eval_file_name(key[0], key[2], key[1])}": yaml.safe_dump(
            entries_to_yaml(eval_entries(group, note)), sort_keys=False, allow_unicode=True
        )
        for key, group in group_results(results).items()
    }


def write_eval_result_files(
    folder: str | os.PathLike, results: Iterable[EvalResult], note: str | None = None
) -> list[str]:
    """Write :func:`eval_result_files` into ``folder`` (each file replaced whole).

    Returns:
        The paths written.
    """
    written = []
    for rel, text in eval_result_files(results, note).items():
        path = os.path.join(str(folder), *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        written.append(path)
    return written


def read_eval_result_files(folder: str | os.PathLike) -> dict[str, list[EvalResultEntry]]:
    """The Eval Results files of a folder, parsed: file name to entries."""
    from huggingface_hub import parse_eval_result_entries

    root = os.path.join(str(folder), EVAL_RESULTS_DIR)
    out = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name.endswith(".yaml"):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                out[name] = parse_eval_result_entries(yaml.safe_load(f) or [])
    return out


__all__ = [
    "eval_entries",
    "eval_file_name",
    "eval_result_files",
    "group_results",
    "read_eval_result_files",
    "write_eval_result_files",
]
