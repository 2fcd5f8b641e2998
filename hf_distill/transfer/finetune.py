"""Fine-tuning every weight of a model on the new dataset, its new head started from the linear probe."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import TrainingArguments, set_seed

from ..hub.evaluation import predict_logits
from ..models.loading import load_model
from ..training.trainer import DistillationTrainer
from .probe import LinearProbe, ProbeConfig, extract_features, fit_linear_probe, model_spec, resolve_device
from .result import FINETUNE, TransferError, TransferResult, evaluation_of
from .transfer_data import TransferData, prepare


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
    trainer is :class:`~hf_distill.training.trainer.DistillationTrainer` with method ``none`` (cross-entropy, the CIFAR
    augmentation, the model's normalization). The fine-tuned model is saved to ``config.output_dir``.
    """
    set_seed(config.seed)
    net = load_model(model, id2label=dict(enumerate(data.class_names)), role="student")
    spec = model_spec(net, model)
    train = prepare(data, data.train, spec, True, max_train_samples, config.seed)
    test = prepare(data, data.test, spec, False, max_test_samples)
    dev = resolve_device(device)
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
        FINETUNE, evaluation_of(model, data, logits, labels), len(train.labels), None, data.name
    )
