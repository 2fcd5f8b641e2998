"""The YAML metadata of a student's card: ``model-index`` results and the ``distillation:`` block.

The metadata follows the Hub's conventions for a distilled model: ``base_model`` is the student's initialization
checkpoint on the Hub (never the teacher, which would file the student as a fine-tune of the teacher); ``datasets``
and ``model-index`` name Hub dataset ids only, and ``model-index`` holds the student's own accuracy (top-1 and top-5),
one entry per (task, dataset, config, split). The teacher, its accuracy, the methods and their hyperparameters, the
baseline's accuracy and the gain go into the ``distillation:`` block (and the card's results table).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from .summary import TASK, DistillationSummary, default_tags, json_safe

DEFAULT_LICENSE = "apache-2.0"
#: ``model-index`` metric types of the student's own results (the teacher's and the baseline's are other models'
#: results: they stay in the ``distillation:`` block and the card's table)
METRIC_TYPES = {
    "accuracy": ("accuracy", "Top-1 accuracy"),
    "top5_accuracy": ("top5_accuracy", "Top-5 accuracy"),
}


def dataset_display_name(dataset: str, local_copy: str | None = None) -> str:
    """The ``model-index`` display name of a dataset; a result measured on a local copy says so.

    Args:
        dataset: the Hub dataset id.
        local_copy: the name of the local copy the publisher states holds the same data, if the result was
            measured on one.

    Returns:
        The name.
    """
    if not local_copy:
        return dataset
    return f"{dataset} (measured on the local copy {local_copy}, stated by the publisher to be the same data)"


def accuracy_results(
    values: Mapping[str, float | None],
    dataset: str,
    split: str | None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    source: tuple[str, str] | None = None,
) -> list[EvalResult]:
    """``model-index`` entries for the student's accuracies on one dataset split.

    Args:
        values: accuracies by :data:`METRIC_TYPES` key (``accuracy``, ``top5_accuracy``); None skipped.
        dataset: the Hub dataset id.
        split: the split as evaluated (``test[:64]``).
        dataset_name: display name of the dataset (default: its id).
        dataset_config: the dataset's config name (``default`` is left out).
        source: optional (name, url) of where the numbers come from.

    Returns:
        A list of :class:`huggingface_hub.EvalResult`.
    """
    out = []
    for key, value in values.items():
        if value is None:
            continue
        mtype, mname = METRIC_TYPES[key]
        out.append(
            EvalResult(
                task_type=TASK,
                task_name="Image Classification",
                dataset_type=dataset,
                dataset_name=dataset_name or dataset,
                dataset_config=dataset_config if dataset_config not in (None, "default") else None,
                dataset_split=split,
                metric_type=mtype,
                metric_name=mname,
                metric_value=round(float(value), 6),
                source_name=source[0] if source else None,
                source_url=source[1] if source else None,
            )
        )
    return out


def eval_results(
    summary: DistillationSummary,
    dataset_name: str | None = None,
    source: tuple[str, str] | None = None,
) -> list[EvalResult]:
    """The ``model-index`` entries of a summary: the student's accuracy and top-5, under its Hub dataset id.

    Args:
        summary: the run.
        dataset_name: display name of the dataset (default: its id, or what says a local copy was used).
        source: optional (name, url) of where the numbers come from.

    Returns:
        A list of :class:`huggingface_hub.EvalResult` (empty without a Hub dataset id or without any accuracy).
    """
    if not summary.dataset:
        return []
    local = summary.local_dataset if summary.dataset_asserted else None
    return accuracy_results(
        {key: getattr(summary, key) for key in METRIC_TYPES},
        summary.dataset,
        summary.eval_split,
        dataset_name or dataset_display_name(summary.dataset, local),
        summary.dataset_config,
        source=source,
    )


def eval_results_index(model_name: str, results: Iterable[EvalResult]) -> list[dict[str, Any]]:
    """``model-index`` metadata (a list with one model entry) for results, as ``metadata_update`` takes it.

    Args:
        model_name: the model's name in the index.
        results: the results.

    Returns:
        The ``model-index`` value.
    """
    from huggingface_hub.repocard_data import eval_results_to_model_index

    return eval_results_to_model_index(model_name, list(results))


def distillation_metadata(summary: DistillationSummary) -> dict[str, Any]:
    """The ``distillation:`` metadata block (teacher, accuracies, methods, weights, hyperparameters, gain)."""
    block: dict[str, Any] = {
        "teacher": summary.teacher_id or summary.teacher,
        "teacher_accuracy": summary.teacher_accuracy,
        "teacher_top5_accuracy": summary.teacher_top5_accuracy,
        "methods": summary.method_names or ["none"],
        "ce_weight": summary.ce_weight,
        "weights": {m.name: m.weight for m in summary.methods},
        "hyperparameters": {m.name: m.hyperparameters for m in summary.methods},
        "student_accuracy": summary.accuracy,
        "student_top5_accuracy": summary.top5_accuracy,
        "baseline_accuracy": summary.baseline_accuracy,
        "gain": None if summary.gain is None else round(summary.gain, 6),
        "library": "hf_distill",
    }
    return {k: json_safe(v) for k, v in block.items() if v not in (None, {}, [])}


def card_data(summary: DistillationSummary, dataset_name: str | None = None) -> ModelCardData:
    """The YAML metadata of the student's card.

    Args:
        summary: the run.
        dataset_name: display name of the dataset in ``model-index``.

    Returns:
        A :class:`huggingface_hub.ModelCardData`.
    """
    results = eval_results(summary, dataset_name)
    metrics = ["accuracy"] + (["top5_accuracy"] if summary.top5_accuracy is not None else [])
    return ModelCardData(
        base_model=summary.base_model,
        datasets=[summary.dataset] if summary.dataset else None,
        library_name=summary.library_name,
        license=summary.license or DEFAULT_LICENSE,
        metrics=metrics,
        model_name=summary.model_name,
        pipeline_tag=TASK,
        tags=summary.tags or default_tags(summary),
        eval_results=results or None,
        distillation=distillation_metadata(summary),
    )
