"""Evaluate a published (or local) student, and write the results into its model card.

The model is loaded the way a Hub user loads it (:mod:`hf_distill.hub.classifier`: ``from_pretrained`` on the
downloaded snapshot or the local folder, with its saved image processor), the data goes through hf_distill's own
evaluation pipeline (:func:`hf_distill.data.datasets.prepare_split` with the model's normalization), and the metrics are the
``evaluate`` metric scripts shipped with hf_distill (``metrics/accuracy``, ``metrics/top5_accuracy``), loaded by
path so that nothing is fetched from the Hub. ``evaluate`` is imported only here, and only when a metric is
needed.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard

from ..data.datasets import class_names, collate, load_image_dataset, prepare_split, resolve_columns
from ..data.labels import generic_names, label_names
from .card_file import CARD_NAME, CardError, merge_eval_results, parse_card, update_card_file
from .classifier import (
    LoadedModel,
    ModelNotFoundError,
    classification_pipeline,
    load_classifier,
    resolve_model,
)
from .eval_files import eval_result_files, write_eval_result_files
from .metadata import accuracy_results, dataset_display_name
from .privacy import looks_local, public_name
from .processor import model_input_spec
from .shipped import metrics_dir
from .summary import TASK
from .upload import HubError, hub_call, hub_endpoint

METRIC_NAMES = ("accuracy", "top5_accuracy")


class LabelMismatchError(ValueError):
    """A dataset whose classes are not the model's ``id2label``."""


# -- metrics -------------------------------------------------------------------------------------------------------
def metric_path(name: str) -> str:
    """Path of a shipped metric script folder (``metrics/<name>``), for ``evaluate.load``.

    Args:
        name: ``accuracy`` or ``top5_accuracy``.

    Returns:
        The folder path.

    Raises:
        FileNotFoundError: no such shipped metric.
    """
    path = metrics_dir() / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(
            f"Metric script {path}/{name}.py not found; shipped metrics: {', '.join(METRIC_NAMES)}."
        )
    return str(path)


@functools.cache
def load_metric(name: str) -> Any:
    """``evaluate.load`` of a shipped metric script, by path (works offline).

    Args:
        name: ``accuracy`` or ``top5_accuracy``.

    Returns:
        The ``evaluate.EvaluationModule``.
    """
    import evaluate

    return evaluate.load(metric_path(name), keep_in_memory=True)


def _evaluate_transformers5_compat() -> None:
    """evaluate 0.4.x's evaluators test ``isinstance(x, transformers.TFPreTrainedModel)``, a class transformers 5
    removed; give the module evaluate holds a placeholder class that nothing is an instance of."""
    base = importlib.import_module("evaluate.evaluator.base")
    mod = getattr(base, "transformers", None)
    if mod is not None and not hasattr(mod, "TFPreTrainedModel"):

        class TFPreTrainedModel:
            """Placeholder for the TensorFlow base class removed in transformers 5."""

        mod.TFPreTrainedModel = TFPreTrainedModel


def image_classification_evaluator() -> Any:
    """``evaluate.evaluator("image-classification")``, usable with transformers 5 pipelines.

    Returns:
        The evaluator.
    """
    import evaluate

    _evaluate_transformers5_compat()
    return evaluate.evaluator("image-classification")


def check_label_names(
    model_labels: list[str],
    dataset_labels: list[str],
    model_ref: str = "the model",
    dataset_ref: str = "the dataset",
) -> None:
    """Check that a dataset's classes are the model's ``id2label``, in the same order.

    Generic names (``LABEL_3``, ``"3"``) on either side only require the same number of classes.

    Args:
        model_labels: the model's class names, by id.
        dataset_labels: the dataset's class names, by id.
        model_ref: the model's name, for the message.
        dataset_ref: the dataset's name, for the message.

    Raises:
        LabelMismatchError: the label sets differ (the message shows the first names of both).
    """

    def preview(names: list[str]) -> str:
        return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")

    same_count = len(model_labels) == len(dataset_labels)
    if same_count and (generic_names(model_labels) or generic_names(dataset_labels)):
        return
    if same_count and model_labels == dataset_labels:
        return
    how = (
        "the same classes in another order"
        if sorted(model_labels) == sorted(dataset_labels)
        else f"{len(model_labels)} vs {len(dataset_labels)} classes"
        if not same_count
        else "other class names"
    )
    raise LabelMismatchError(
        f"The labels of dataset {dataset_ref!r} do not match the model's id2label ({how}): the model {model_ref!r} "
        f"predicts [{preview(model_labels)}] ({len(model_labels)} classes) but the dataset has "
        f"[{preview(dataset_labels)}] ({len(dataset_labels)} classes). Evaluate on the dataset the model was "
        "trained on, or name the right label column with --label_column."
    )


# -- evaluation ------------------------------------------------------------------------------------------------------
@dataclass
class EvaluationResult:
    """Accuracy of one model on one dataset split."""

    model: str
    dataset: str
    split: str
    num_samples: int
    accuracy: float
    top5_accuracy: float | None = None
    max_samples: int | None = None
    dataset_config: str | None = None
    #: the name of the local dataset evaluated on (None: a Hub dataset, ``dataset`` is its id)
    local_dataset: str | None = None
    #: the Hub dataset id the publisher states the local dataset is (its results are filed under it)
    dataset_id: str | None = None

    @property
    def hub_dataset(self) -> str | None:
        """The Hub dataset id the results are filed under: the dataset's, or the one stated for a local copy."""
        return self.dataset_id or (None if self.local_dataset else self.dataset)

    @property
    def split_label(self) -> str:
        """The split as evaluated (``test[:200]`` when only the first rows were used)."""
        return f"{self.split}[:{self.num_samples}]" if self.max_samples is not None else self.split

    def metrics(self) -> dict[str, float]:
        """``{"accuracy": ..., "top5_accuracy": ...}`` (top-5 only when computed)."""
        out = {"accuracy": self.accuracy}
        if self.top5_accuracy is not None:
            out["top5_accuracy"] = self.top5_accuracy
        return out

    def as_eval_results(self, dataset_name: str | None = None) -> list[EvalResult]:
        """The results as ``model-index`` entries (metric types ``accuracy`` and ``top5_accuracy``), under the Hub
        dataset id (:attr:`hub_dataset`).

        Args:
            dataset_name: display name of the dataset (default: its id, saying when a local copy was used).

        Returns:
            A list of :class:`huggingface_hub.EvalResult` (empty for a local dataset with no stated Hub id).
        """
        if self.hub_dataset is None:
            return []
        name = dataset_name or dataset_display_name(self.hub_dataset, self.local_dataset)
        return accuracy_results(self.metrics(), self.hub_dataset, self.split_label, name, self.dataset_config)

    def eval_note(self) -> str:
        """What the Eval Results entries say besides the value."""
        note = f"{self.num_samples} images, evaluated with hf_distill's recipes/evaluate.py"
        if self.local_dataset and self.dataset_id:
            note += f"; measured on the local copy {self.local_dataset}, stated by the publisher to be this dataset"
        return note

    def table(self) -> str:
        """A Markdown table of the result."""
        top5 = "–" if self.top5_accuracy is None else f"{100 * self.top5_accuracy:.2f}%"
        return (
            "| model | dataset | split | samples | top-1 accuracy | top-5 accuracy |\n"
            "|---|---|---|---|---|---|\n"
            f"| {self.model} | {self.dataset} | {self.split_label} | {self.num_samples} | "
            f"{100 * self.accuracy:.2f}% | {top5} |"
        )


def _dataset_id(dataset: Any) -> str:
    if isinstance(dataset, str):
        return public_name(dataset) or dataset
    info = getattr(dataset, "info", None)
    return getattr(info, "dataset_name", None) or "dataset"


def _is_local(dataset: Any) -> bool:
    # a datasets.Dataset object is never taken for a Hub dataset: its own name is not its Hub id
    return not isinstance(dataset, str) or looks_local(dataset)


@torch.no_grad()
def predict_logits(
    model: Any, dataset: Any, batch_size: int = 64, device: str | None = None, progress: bool | None = None
) -> tuple[Any, Any]:
    """Logits and labels of a prepared split (see :func:`hf_distill.data.datasets.prepare_split`).

    Args:
        model: the classifier.
        dataset: a prepared dataset yielding ``pixel_values`` and ``labels``.
        batch_size: evaluation batch size.
        device: device to run on (default: the model's).
        progress: a progress bar over the batches on stderr (None: unless hf_distill logs above WARNING).

    Returns:
        (logits (N, C) float tensor, labels (N,) long tensor), on the CPU.
    """
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    p = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    was = model.training
    model.eval()
    logits, labels = [], []
    try:
        quiet = logging.getLogger("hf_distill").getEffectiveLevel() > logging.WARNING
        for batch in tqdm(
            loader, desc="Evaluating", unit="batch", disable=quiet if progress is None else not progress
        ):
            out = model(pixel_values=batch["pixel_values"].to(dev))
            lg = out.logits if hasattr(out, "logits") else out[0]
            logits.append(lg.float().cpu())
            labels.append(batch["labels"])
    finally:
        model.train(was)
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def evaluate_classifier(
    model: Any,
    dataset: Any,
    processor: Any = None,
    split: str = "test",
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 64,
    model_ref: str | None = None,
    dataset_ref: str | None = None,
    device: str | None = None,
    dataset_id: str | None = None,
    progress: bool | None = None,
) -> EvaluationResult:
    """Top-1 and top-5 accuracy of a classifier on one split, with the shipped ``evaluate`` metric scripts.

    Args:
        model: the classifier (``from_pretrained``).
        dataset: a dataset folder / parquet file / Hub id, or a ``datasets.Dataset`` (raw, not prepared).
        processor: the model's image processor (gives the normalization and input size).
        split: the split to load when ``dataset`` is a reference.
        image_column, label_column: override the detected columns.
        max_samples: evaluate only the first N rows.
        batch_size: evaluation batch size.
        model_ref, dataset_ref: names for the result and messages.
        device: where to run.
        dataset_id: for a local dataset, the Hub dataset id its user states it holds the same data as.
        progress: draw a progress bar over the batches (None: unless hf_distill logs above WARNING).

    Returns:
        The :class:`EvaluationResult`.

    Raises:
        LabelMismatchError: the dataset's classes are not the model's.
        hf_distill.data.datasets.DataError: a dataset that cannot be read or has no image/label column.
    """
    ds = load_image_dataset(dataset, split) if isinstance(dataset, str) else dataset
    dataset_ref = dataset_ref or _dataset_id(dataset)
    model_ref = model_ref or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    img_col, lab_col = resolve_columns(ds, image_column, label_column)
    check_label_names(label_names(model.config.id2label), class_names(ds, lab_col), model_ref, dataset_ref)
    spec = model_input_spec(model, processor)
    prepared = prepare_split(ds, spec.mean, spec.std, spec.image_size, False, img_col, lab_col, max_samples)
    logits, labels = predict_logits(model, prepared.dataset, batch_size, device, progress)
    refs = labels.tolist()
    acc = load_metric("accuracy").compute(predictions=logits.argmax(-1).tolist(), references=refs)["accuracy"]
    top5 = None
    if logits.shape[-1] > 5:
        top5 = load_metric("top5_accuracy").compute(predictions=logits.tolist(), references=refs, k=5)[
            "top5_accuracy"
        ]
    return EvaluationResult(
        model=model_ref,
        dataset=dataset_ref,
        split=str(getattr(ds, "split", None) or split),
        num_samples=len(refs),
        accuracy=float(acc),
        top5_accuracy=None if top5 is None else float(top5),
        max_samples=max_samples if max_samples is not None and max_samples < len(ds) else None,
        dataset_config=getattr(getattr(ds, "info", None), "config_name", None),
        local_dataset=_dataset_id(dataset) if _is_local(dataset) else None,
        dataset_id=dataset_id,
    )


# -- cards -----------------------------------------------------------------------------------------------------------
def card_results(result: EvaluationResult, dataset_name: str | None = None) -> list[EvalResult]:
    """The ``model-index`` results of an evaluation, refused for a local dataset that names no Hub id.

    Raises:
        CardError: a local dataset without ``dataset_id``.
    """
    results = result.as_eval_results(dataset_name)
    if not results:
        raise CardError(
            f"{result.dataset} is a local dataset, and a model card files results under Hub dataset ids only: pass "
            "--dataset_id <hub id> if it holds the same data as that Hub dataset (the card will say so), or "
            "evaluate without --update-card."
        )
    return results


def update_model_card(
    model: str,
    result: EvaluationResult,
    dataset_name: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    create_pr: bool = False,
) -> str:
    """Write an evaluation into the model card's ``model-index`` and the Hub's Eval Results file, keeping
    everything else the card holds.

    A local folder's ``README.md`` is updated in place (created when missing) and its ``.eval_results/`` file
    written; for a Hub model both go up in one commit (the evaluated (dataset, config, split) entry replaced,
    everything else kept).

    Args:
        model: the model folder or Hub id.
        result: the evaluation.
        dataset_name: display name of the dataset.
        token: Hub token.
        endpoint: Hub endpoint (default: ``HF_ENDPOINT``).
        create_pr: open a pull request on the Hub instead of committing.

    Returns:
        The card path, or the commit URL on the Hub.

    Raises:
        CardError: the existing card's YAML metadata is malformed, or the dataset is local with no Hub id (nothing
            is written).
        hf_distill.hub.upload.HubError: the Hub could not be reached (nothing is written).
    """
    results = card_results(result, dataset_name)
    if os.path.isdir(model):
        path = os.path.join(model, CARD_NAME)
        update_card_file(path, results, model_name=os.path.basename(os.path.normpath(model)))
        write_eval_result_files(model, results, result.eval_note())
        return path
    from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    where = hub_endpoint(endpoint)
    name = model.split("/")[-1]
    try:  # read the current card first: a malformed one must be reported, not overwritten
        current = hub_call(
            lambda: hf_hub_download(model, CARD_NAME, token=token, endpoint=where, repo_type="model"), where
        )
        card = parse_card(Path(current).read_text(encoding="utf-8"), f"README.md of {model}")
    except HubError as e:
        if not isinstance(e.__cause__, EntryNotFoundError):
            raise
        card = None
    if card is None:
        card = ModelCard(f"---\npipeline_tag: {TASK}\n---\n\n# {name}\n")
    merge_eval_results(card, results, card.data.model_name or name)
    files = {CARD_NAME: str(card), **eval_result_files(results, result.eval_note())}
    api = HfApi(endpoint=where, token=token)
    info = hub_call(
        lambda: api.create_commit(
            model,
            [CommitOperationAdd(path, text.encode("utf-8")) for path, text in files.items()],
            commit_message=f"Add {result.hub_dataset} {result.split_label} evaluation (hf_distill)",
            create_pr=create_pr,
            repo_type="model",
        ),
        where,
        changed=f"no commit was made, {model} is as it was",
    )
    return info.commit_url


def evaluate_model(
    model: str,
    dataset: str,
    split: str = "test",
    max_samples: int | None = None,
    batch_size: int = 64,
    image_column: str | None = None,
    label_column: str | None = None,
    update_card: bool = False,
    dataset_id: str | None = None,
    trust_remote_code: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> EvaluationResult:
    """Load ``model`` (folder or Hub id), evaluate it on ``dataset``/``split``, optionally update its card.

    Args:
        model: model folder or Hub id.
        dataset: dataset folder, parquet file or Hub id.
        split: split to evaluate.
        max_samples: only the first N rows.
        batch_size: evaluation batch size.
        image_column, label_column: override the detected columns.
        update_card: write the results into the card's ``model-index`` and Eval Results file.
        dataset_id: for a local dataset, the Hub dataset id its user states it holds the same data as.
        trust_remote_code: for custom models other than the CIFAR zoo.
        revision, token, endpoint: Hub access.
        device: where to run.
        progress: draw a progress bar over the batches (None: unless hf_distill logs above WARNING).

    Returns:
        The :class:`EvaluationResult`.
    """
    loaded = load_classifier(model, trust_remote_code, revision, token, endpoint)
    result = evaluate_classifier(
        loaded.model,
        dataset,
        loaded.processor,
        split,
        image_column,
        label_column,
        max_samples,
        batch_size,
        model_ref=model,
        device=device,
        dataset_id=dataset_id,
        progress=progress,
    )
    if update_card:
        update_model_card(model, result, token=token, endpoint=endpoint)
    return result


__all__ = [
    "EvaluationResult",
    "LabelMismatchError",
    "LoadedModel",
    "ModelNotFoundError",
    "check_label_names",
    "classification_pipeline",
    "evaluate_classifier",
    "evaluate_model",
    "image_classification_evaluator",
    "load_classifier",
    "load_metric",
    "metric_path",
    "metrics_dir",
    "predict_logits",
    "resolve_model",
    "update_model_card",
]
