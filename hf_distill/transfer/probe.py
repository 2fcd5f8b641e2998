"""The linear probe: penultimate features of a frozen model, standardized, and a logistic regression on them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import collate
from ..features import FeatureNeeds
from ..hub.processor import model_input_spec
from ..models.loading import load_model, zoo_architecture
from ..models.normalization import InputSpec
from ..models.taps import feature_tap
from .result import LINEAR_PROBE, TransferError, TransferResult, evaluation_of
from .transfer_data import TransferData, prepare


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


def _image_processor(model: str) -> Any:
    """The saved image processor of a folder or Hub model, if it has one (zoo and timm names have none)."""
    if zoo_architecture(model) is not None or not (os.path.isdir(model) or "/" in model):
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model)
    except (OSError, ValueError, KeyError):
        return None


def model_spec(net: nn.Module, model: str) -> InputSpec:
    """The input size and normalization ``net`` (loaded from ``model``) was trained with (its saved processor, else
    its config)."""
    return model_input_spec(net, _image_processor(model))


def load_frozen_model(model: str, **kwargs: Any) -> tuple[nn.Module, InputSpec]:
    """Load a model by name (folder, zoo, timm or Hub id), frozen and in eval mode, with its input spec."""
    net = load_model(model, role="model", **kwargs)
    spec = model_spec(net, model)
    net.eval().requires_grad_(False)
    return net, spec


def resolve_device(device: str | None) -> torch.device:
    """The given device, else CUDA when available, else the CPU."""
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
    dev = resolve_device(device)
    model.to(dev).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    feats, labels = [], []
    for batch in loader:
        try:
            emb = tap(
                model, batch["pixel_values"].to(dev), FeatureNeeds(logits=False, embedding=True)
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
        LINEAR_PROBE,
        evaluation_of(model_ref, data, logits, y_test),
        len(y_train),
        x_train.shape[1],
        data.name,
    )
