"""The YAML metadata of a student's card: ``model-index`` results and the ``distillation:`` block.

The metadata follows the Hub's conventions for a distilled model: ``base_model`` is the student's initialization
checkpoint (never the teacher, which would file the student as a fine-tune of the teacher); the teacher, the
methods and their hyperparameters, the teacher's and the baseline's accuracy and the gain go into a ``distillation:``
block; ``model-index`` holds the student's accuracy (top-1 and top-5) and, as separately typed metrics, the
teacher's and the no-distillation baseline's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from .summary import TASK, DistillationSummary, default_tags, json_safe

DEFAULT_LICENSE = "apache-2.0"
#: ``model-index`` metric types: the student's own results use the standard ``accuracy``; the teacher's and the
#: baseline's carry their own types so leaderboards never mistake them for the student's.
METRIC_TYPES = {
    "accuracy": ("accuracy", "Top-1 accuracy"),
    "top5_accuracy": ("top5_accuracy", "Top-5 accuracy"),
    "teacher_accuracy": ("teacher_accuracy", "Teacher top-1 accuracy"),
    "teacher_top5_accuracy": ("teacher_top5_accuracy", "Teacher top-5 accuracy"),
    "baseline_accuracy": ("baseline_accuracy", "No-distillation baseline top-1 accuracy"),
    "baseline_top5_accuracy": ("baseline_top5_accuracy", "No-distillation baseline top-5 accuracy"),
}


def accuracy_results(
    values: Mapping[str, float | None],
    dataset: str,
    split: str | None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    teacher: str | None = None,
    source: tuple[str, str] | None = None,
) -> list[EvalResult]:
    """``model-index`` entries for accuracies on one dataset split.

    Args:
        values: accuracies by :data:`METRIC_TYPES` key (``accuracy``, ``teacher_top5_accuracy``, ...); None skipped.
        dataset: the dataset id.
        split: the split as evaluated (``test[:64]``).
        dataset_name: display name of the dataset (default: its id).
        dataset_config: the dataset's config name (``default`` is left out).
        teacher: the teacher's name, added to the teacher metrics' names.
        source: optional (name, url) of where the numbers come from.

    Returns:
        A list of :class:`huggingface_hub.EvalResult`.
    """
    out = []
    for key, value in values.items():
        if value is None:
            continue
        mtype, mname = METRIC_TYPES[key]
        if key.startswith("teacher") and teacher:
            mname = f"{mname} ({teacher})"
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
    """The ``model-index`` entries of a summary: the student's accuracy and top-5, the teacher's and the baseline's.

    Args:
        summary: the run.
        dataset_name: display name of the dataset (default: its id).
        source: optional (name, url) of where the numbers come from.

    Returns:
        A list of :class:`huggingface_hub.EvalResult` (empty without a dataset or without any accuracy).
    """
    if not summary.dataset:
        return []
    values = {key: getattr(summary, key) for key in METRIC_TYPES}
    return accuracy_results(
        values,
        summary.dataset,
        summary.eval_split,
        dataset_name,
        summary.dataset_config,
        teacher=summary.teacher,
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
        "teacher": summary.teacher,
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
