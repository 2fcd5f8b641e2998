"""Representation transfer: how well a trained model's penultimate features serve a new dataset.

Two protocols, as in the CRD and ICD papers' transfer experiments:

* **linear probe**: the model is frozen, its penultimate feature (the ``embedding`` of
  :mod:`hf_distill.models.taps`, the input of its classifier) is extracted once for every image, standardized with
  the training split's statistics, and a multinomial logistic regression is fitted on the training split with
  L-BFGS; test top-1/top-5 come from that classifier;
* **fine-tune**: the whole model with a new head is trained on the new dataset (the
  :class:`~hf_distill.trainer.DistillationTrainer` with method ``none``), then evaluated.

Images are read at the model's input size and normalization (:func:`hf_distill.hub.processor.model_input_spec`),
so a CIFAR model probes 32 px images and a 224 px timm model sees them resized. Every model kind that
:func:`hf_distill.models.loading.load_model` builds (CIFAR zoo, timm, transformers) works. A result becomes its own
``model-index`` entry (task name ``transfer, linear probe`` or ``transfer, fine-tune``) of the model's card.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from huggingface_hub import EvalResult
from torch import Tensor, nn

from .data import LABEL_COLUMNS, PreparedSplit, collate, load_image_dataset, prepare_split
from .hub import EvaluationResult, update_card_file
from .hub.processor import model_input_spec
from .metrics import topk_accuracy
from .models.loading import load_model, zoo_architecture
from .models.normalization import InputSpec
from .models.taps import TapRequest, feature_tap

logger = logging.getLogger(__name__)

LINEAR_PROBE = "linear probe"
FINETUNE = "fine-tune"
#: the ``task.name`` of the card's ``model-index`` entry, per protocol
TASK_NAMES = {LINEAR_PROBE: "transfer, linear probe", FINETUNE: "transfer, fine-tune"}
#: its ``task.type``: the Hub groups ``model-index`` results by (task type, dataset, config, split), so each protocol
#: needs its own type to stay an entry of its own beside the model's plain evaluation on the same split
TASK_TYPES = {LINEAR_PROBE: "transfer-linear-probe", FINETUNE: "transfer-fine-tune"}
#: top-5 accuracy is reported only above this many classes (at or below it, it is 1 by construction)
TOP5_MIN_CLASSES = 6


class TransferError(ValueError):
    """Input that a transfer run cannot use; the message says how to fix it."""


@dataclass(frozen=True)
class ProbeConfig:
    """The linear classifier fitted on frozen features.

    Args:
        c: inverse L2 strength as in scikit-learn's ``LogisticRegression`` (the penalty ``||W||^2 / (2 c N)`` is
            added to the mean cross-entropy over the N training rows); 1 is scikit-learn's default.
        max_iter: L-BFGS iterations.
        seed: seeds the torch RNG before fitting (the fit starts from zero weights and is deterministic).
    """

    c: float = 1.0
    max_iter: int = 500
    seed: int = 0


@dataclass(frozen=True)
class FinetuneConfig:
    """Full fine-tuning of the model with a new head (SGD with momentum 0.9 and a cosine schedule).

    Args:
        head_init: ``"probe"`` starts the new head from the linear probe on the frozen features (LP-FT, Kumar et
            al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022):
            the first steps then refine a working classifier instead of pushing gradients of a random head
            through the pretrained features; ``"random"`` keeps the freshly initialized head.
    """

    output_dir: str = "outputs/transfer-finetune"
    epochs: float = 3.0
    learning_rate: float = 0.01
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    head_init: str = "probe"


@dataclass
class TransferData:
    """The two splits of the new dataset, and how they are named in results."""

    train: datasets.Dataset
    test: datasets.Dataset
    image_column: str | None
    label_column: str
    class_names: list[str]
    dataset_id: str
    name: str
    test_split: str
    classes: list[int] | None = None

    @property
    def config_label(self) -> str | None:
        """How the card's ``dataset.config`` names a class subset (``classes=5,6,7``), None for all classes."""
        return f"classes={','.join(map(str, self.classes))}" if self.classes else None


@dataclass
class TransferResult:
    """Outcome of one transfer run."""

    protocol: str
    evaluation: EvaluationResult
    num_train: int
    feature_dim: int | None
    dataset_name: str

    def eval_results(self) -> list[EvalResult]:
        """The result as ``model-index`` entries, with the protocol as the task name."""
        results = self.evaluation.as_eval_results(self.dataset_name)
        for r in results:
            r.task_type, r.task_name = TASK_TYPES[self.protocol], TASK_NAMES[self.protocol]
        return results

    def table(self) -> str:
        """A one-row Markdown table."""
        e = self.evaluation
        top5 = "–" if e.top5_accuracy is None else f"{100 * e.top5_accuracy:.2f}%"
        return (
            "| model | protocol | dataset | train | test | top-1 | top-5 |\n|---|---|---|---|---|---|---|\n"
            f"| {e.model} | {self.protocol} | {self.dataset_name} | {self.num_train} | {e.num_samples} | "
            f"{100 * e.accuracy:.2f}% | {top5} |"
        )


# -- data ------------------------------------------------------------------------------------------------------------
def parse_classes(text: str | Sequence[int] | None) -> list[int] | None:
    """``"5,6,7"`` -> ``[5, 6, 7]`` (None or empty: all classes)."""
    if text is None or text == "" or text == []:
        return None
    if isinstance(text, str):
        try:
            return [int(c) for c in text.split(",") if c.strip()]
        except ValueError as e:
            raise TransferError(
                f"--classes takes class ids separated by commas (e.g. 5,6,7), not {text!r}."
            ) from e
    return [int(c) for c in text]


def label_column_of(ds: datasets.Dataset, label_column: str | None, dataset: str) -> str:
    """The label column, or a one-line error for a dataset without labels."""
    if label_column is None:
        label_column = next((c for c in LABEL_COLUMNS if c in ds.column_names), None)
    if label_column is None or label_column not in ds.column_names:
        raise TransferError(
            f"Dataset {dataset!r} has no label column {label_column or ''}(columns: {', '.join(ds.column_names)}): "
            "transfer trains a classifier on class labels. Name the label column with --label_column, or use a "
            f"labelled dataset (a column named {' / '.join(LABEL_COLUMNS)})."
        )
    return label_column


def class_names_of(ds: datasets.Dataset, label_column: str) -> list[str]:
    """Class names (``ClassLabel`` names, else the ids seen as strings)."""
    feature = ds.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [str(i) for i in range(int(max(ds.with_format(None)[label_column])) + 1)]


def select_classes(
    ds: datasets.Dataset, label_column: str, classes: Sequence[int], relabel: bool = True
) -> datasets.Dataset:
    """Keep the rows of ``classes`` only.

    Args:
        ds: a split with class ids in ``label_column``.
        label_column: the label column.
        classes: the class ids to keep.
        relabel: renumber them ``0..len(classes)-1`` in the given order, with their names as a ``ClassLabel``
            (what a classifier of the subset needs); ``False`` keeps the ids and the full label set (what a teacher
            trained on all classes needs when distilling on the subset).

    Returns:
        The filtered split.
    """
    names = class_names_of(ds, label_column)
    bad = [c for c in classes if not 0 <= c < len(names)]
    if bad or len(set(classes)) != len(classes):
        raise TransferError(
            f"--classes {','.join(map(str, classes))} must be distinct class ids in [0, {len(names)}) "
            f"({', '.join(f'{i}={n}' for i, n in enumerate(names[:12]))}{', ...' if len(names) > 12 else ''})."
        )
    keep = set(classes)
    ds = ds.filter(lambda y: y in keep, input_columns=label_column)
    if not relabel:
        return ds
    new_id = {c: i for i, c in enumerate(classes)}
    ds = ds.map(lambda y: {label_column: new_id[y]}, input_columns=label_column)
    return ds.cast_column(label_column, datasets.ClassLabel(names=[names[c] for c in classes]))


def write_class_subset(
    dataset: str,
    classes: Sequence[int],
    out_dir: str,
    splits: Sequence[str] = ("train", "test"),
    label_column: str | None = None,
) -> str:
    """Write the rows of some classes of a dataset as ``<out_dir>/<split>.parquet`` (a folder ``--dataset`` reads).

    The label ids and the full ``ClassLabel`` are kept, so a teacher trained on every class still fits: this is how
    a student is distilled on some classes (``recipes/distill.py --dataset <out_dir>``) and probed on the others.

    Returns:
        ``out_dir``.
    """
    os.makedirs(out_dir, exist_ok=True)
    for split in splits:
        ds = load_image_dataset(dataset, split)
        subset = select_classes(ds, label_column_of(ds, label_column, dataset), list(classes), relabel=False)
        subset.to_parquet(os.path.join(out_dir, f"{split}.parquet"))
    return out_dir


def _load_split(dataset: str, split: str, option: str) -> datasets.Dataset:
    try:
        return load_image_dataset(dataset, split)
    except ValueError as e:
        if "Unknown split" not in str(e):
            raise
        raise TransferError(
            f"Dataset {dataset!r} has no split {split!r} ({str(e).split('.', 1)[1].strip()}). Name the split with "
            f"{option}; a dataset with a single split can be divided, e.g. --train_split 'train[:80%]' "
            "--test_split 'train[80%:]'."
        ) from None


def load_transfer_data(
    dataset: str,
    train_split: str = "train",
    test_split: str = "test",
    classes: Sequence[int] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> TransferData:
    """Load and check the two splits of the new dataset (optionally only some classes, renumbered).

    Raises:
        TransferError: a missing split, no label column, bad class ids, or the same split twice.
    """
    if train_split == test_split:
        raise TransferError(
            f"--train_split and --test_split are both {train_split!r}: the probe must be tested on held-out images "
            "(e.g. --train_split 'train[:80%]' --test_split 'train[80%:]')."
        )
    train = _load_split(dataset, train_split, "--train_split")
    test = _load_split(dataset, test_split, "--test_split")
    label_column = label_column_of(train, label_column, dataset)
    label_column_of(test, label_column, f"{dataset}' split '{test_split}")
    dataset_id = os.path.basename(os.path.normpath(dataset)) if os.path.exists(dataset) else dataset
    name = dataset_id
    names = class_names_of(train, label_column)
    if classes:
        train = select_classes(train, label_column, classes)
        test = select_classes(test, label_column, classes)
        name = f"{name}, classes {','.join(map(str, classes))} ({', '.join(names[c] for c in classes)})"
        names = [names[c] for c in classes]
    return TransferData(
        train,
        test,
        image_column,
        label_column,
        names,
        dataset_id,
        name,
        test_split,
        list(classes or []) or None,
    )


def prepare(
    data: TransferData,
    split: datasets.Dataset,
    spec: InputSpec,
    train: bool,
    max_samples: int | None = None,
    seed: int = 0,
) -> PreparedSplit:
    """One split transformed for the model (its normalization and input size; augmentation when ``train``)."""
    return prepare_split(
        split,
        spec.mean,
        spec.std,
        spec.image_size,
        train,
        data.image_column,
        data.label_column,
        max_samples,
        seed,
    )


# -- models ----------------------------------------------------------------------------------------------------------
def _image_processor(model: str) -> Any:
    """The saved image processor of a folder or Hub model, if it has one (zoo and timm names have none)."""
    if zoo_architecture(model) is not None or not (os.path.isdir(model) or "/" in model):
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model)
    except (OSError, ValueError, KeyError):
        return None


def load_frozen_model(model: str, **kwargs: Any) -> tuple[nn.Module, InputSpec]:
    """Load a model by name (folder, zoo, timm or Hub id), frozen and in eval mode, with its input spec."""
    net = load_model(model, role="model", **kwargs)
    spec = model_input_spec(net, _image_processor(model))
    net.eval().requires_grad_(False)
    return net, spec


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 256,
    device: str | None = None,
    model_ref: str = "the model",
) -> tuple[Tensor, Tensor]:
    """Penultimate features and labels of a prepared split, on the CPU, in row order.

    Raises:
        TransferError: the model has no penultimate feature that hf_distill can read.
    """
    try:
        tap = feature_tap(model)
    except TypeError as e:
        raise TransferError(f"{model_ref!r} has no penultimate feature to transfer: {e}") from None
    dev = _device(device)
    model.to(dev).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    feats, labels = [], []
    for batch in loader:
        try:
            emb = tap(
                model, batch["pixel_values"].to(dev), TapRequest(logits=False, embedding=True)
            ).embedding
        except ValueError as e:
            raise TransferError(f"{model_ref!r} has no penultimate feature to transfer: {e}") from None
        if emb is None or emb.ndim != 2:
            raise TransferError(
                f"{model_ref!r} has no penultimate feature to transfer (its classifier input is "
                f"{'missing' if emb is None else tuple(emb.shape)}, not a (batch, features) matrix)."
            )
        feats.append(emb.float().cpu())
        labels.append(batch["labels"])
    return torch.cat(feats), torch.cat(labels)


# -- linear probe ----------------------------------------------------------------------------------------------------
@dataclass
class LinearProbe:
    """A standardizer and a linear classifier on frozen features."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def logits(self, features: Tensor) -> Tensor:
        x = (features.to(self.mean) - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def folded(self) -> tuple[Tensor, Tensor]:
        """(weight, bias) of the same classifier on raw features: the standardization folded in."""
        weight = self.weight / self.std
        return weight, self.bias - weight @ self.mean


def fit_linear_probe(
    features: Tensor, labels: Tensor, num_classes: int, config: ProbeConfig = ProbeConfig()
) -> LinearProbe:
    """Multinomial logistic regression on standardized features, fitted with L-BFGS in float64.

    The features are standardized with the training rows' mean and standard deviation (constant features get
    a unit scale), so one regularization strength suits every model.
    """
    torch.manual_seed(config.seed)
    x = features.double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    x = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    penalty = 1.0 / (2.0 * config.c * len(x))
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=config.max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach())


def _evaluation(model_ref: str, data: TransferData, logits: Tensor, labels: Tensor) -> EvaluationResult:
    top5 = topk_accuracy(logits.numpy(), labels.numpy(), 5) if logits.shape[1] >= TOP5_MIN_CLASSES else None
    return EvaluationResult(
        model=model_ref,
        dataset=data.dataset_id,
        split=data.test_split,
        num_samples=len(labels),
        accuracy=topk_accuracy(logits.numpy(), labels.numpy(), 1),
        top5_accuracy=top5,
        dataset_config=data.config_label,
    )


def linear_probe(
    model: nn.Module,
    spec: InputSpec,
    data: TransferData,
    config: ProbeConfig = ProbeConfig(),
    model_ref: str = "model",
    batch_size: int = 256,
    device: str | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> TransferResult:
    """Linear-probe transfer of a frozen model to ``data`` (see the module docstring)."""
    train = prepare(data, data.train, spec, False, max_train_samples)
    test = prepare(data, data.test, spec, False, max_test_samples)
    x_train, y_train = extract_features(model, train.dataset, batch_size, device, model_ref)
    x_test, y_test = extract_features(model, test.dataset, batch_size, device, model_ref)
    probe = fit_linear_probe(x_train, y_train, len(data.class_names), config)
    logits = probe.logits(x_test).float()
    return TransferResult(
        LINEAR_PROBE, _evaluation(model_ref, data, logits, y_test), len(y_train), x_train.shape[1], data.name
    )


# -- fine-tuning -----------------------------------------------------------------------------------------------------
def classifier_layer(model: nn.Module) -> nn.Linear:
    """The linear layer that maps the penultimate feature to the logits (zoo, timm and transformers models).

    Raises:
        TransferError: the classifier is not a single linear layer.
    """
    core = getattr(model, "timm_model", None) or getattr(model, "model", None)
    if core is not None and hasattr(core, "get_classifier"):
        head = core.get_classifier()
    else:
        head = next((getattr(model, a) for a in ("classifier", "fc", "head") if hasattr(model, a)), None)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
    if len(linears) != 1:
        raise TransferError(
            f"The classifier of {type(model).__name__} is not one linear layer, so the probe cannot initialize it: "
            "pass --finetune_head random."
        )
    return linears[0]


@torch.no_grad()
def set_classifier(model: nn.Module, probe: LinearProbe) -> None:
    """Load a fitted probe into the model's classifier layer (same class count and feature width)."""
    layer = classifier_layer(model)
    weight, bias = probe.folded()
    if tuple(layer.weight.shape) != tuple(weight.shape) or layer.bias is None:
        raise TransferError(
            f"The model's classifier {tuple(layer.weight.shape)} cannot hold the probe {tuple(weight.shape)}."
        )
    layer.weight.copy_(weight.to(layer.weight))
    layer.bias.copy_(bias.to(layer.bias))


def finetune(
    model: str,
    data: TransferData,
    config: FinetuneConfig = FinetuneConfig(),
    batch_size: int = 256,
    device: str | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> TransferResult:
    """Fine-tune every weight of ``model`` with a head for ``data``'s classes, then test it.

    The head is the linear probe of the frozen model (``config.head_init="probe"``) or a fresh one (``"random"``:
    new whenever the class count differs from the model's, transformers' ``ignore_mismatched_sizes``). The
    trainer is :class:`~hf_distill.trainer.DistillationTrainer` with method ``none`` (cross-entropy, the CIFAR
    augmentation, the model's normalization). The fine-tuned model is saved to ``config.output_dir``.
    """
    from transformers import TrainingArguments, set_seed

    from .hub.evaluation import predict_logits
    from .trainer import DistillationTrainer

    set_seed(config.seed)
    net = load_model(model, id2label=dict(enumerate(data.class_names)), role="student")
    spec = model_input_spec(net, _image_processor(model))
    train = prepare(data, data.train, spec, True, max_train_samples, config.seed)
    test = prepare(data, data.test, spec, False, max_test_samples)
    dev = _device(device)
    if config.head_init == "probe":
        plain = prepare(data, data.train, spec, False, max_train_samples)
        features, labels = extract_features(net, plain.dataset, batch_size, device, model)
        set_classifier(
            net, fit_linear_probe(features, labels, len(data.class_names), ProbeConfig(seed=config.seed))
        )
    elif config.head_init != "random":
        raise TransferError(f"--finetune_head is 'probe' or 'random', not {config.head_init!r}.")
    args = TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        optim="sgd",
        optim_args="momentum=0.9",
        lr_scheduler_type="cosine",
        save_strategy="no",
        report_to="none",
        logging_steps=20,
        seed=config.seed,
        use_cpu=dev.type == "cpu",
        dataloader_pin_memory=dev.type == "cuda",
    )
    trainer = DistillationTrainer(
        model=net, teacher=None, objective="none", args=args, train_dataset=train.dataset, student_input=spec
    )
    trainer.train()
    trainer.save_model()
    logits, labels = predict_logits(net, test.dataset, batch_size, str(dev))
    return TransferResult(
        FINETUNE, _evaluation(model, data, logits, labels), len(train.labels), None, data.name
    )


# -- cards -----------------------------------------------------------------------------------------------------------
def card_path(model: str) -> str:
    """The ``README.md`` that ``--update_card`` writes: only a local model folder's card is updated.

    Raises:
        TransferError: ``model`` is not a local folder.
    """
    if not os.path.isdir(model):
        raise TransferError(
            f"--update_card writes the model card of a local model folder, and {model!r} is not one. Download or "
            "save the model to a folder first, or run without --update_card."
        )
    return os.path.join(model, "README.md")


def write_to_card(model: str, result: TransferResult) -> str:
    """Add the result to the card of a local model folder as its own ``model-index`` entry.

    Entries of other protocols, datasets or splits are kept; the same protocol on the same data is replaced.

    Returns:
        The card path.
    """
    path = card_path(model)
    update_card_file(path, result.eval_results(), model_name=os.path.basename(os.path.normpath(model)))
    return path


__all__ = [
    "FINETUNE",
    "LINEAR_PROBE",
    "TASK_NAMES",
    "TASK_TYPES",
    "FinetuneConfig",
    "LinearProbe",
    "ProbeConfig",
    "TransferData",
    "TransferError",
    "TransferResult",
    "card_path",
    "classifier_layer",
    "extract_features",
    "finetune",
    "fit_linear_probe",
    "linear_probe",
    "load_frozen_model",
    "load_transfer_data",
    "parse_classes",
    "prepare",
    "select_classes",
    "set_classifier",
    "write_class_subset",
    "write_to_card",
]
