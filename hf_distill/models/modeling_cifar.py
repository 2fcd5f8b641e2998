"""transformers model classes of the CIFAR zoo (``AutoModelForImageClassification`` compatible).

Imports only ``torch``, ``transformers`` and the files of this folder through relative imports: with
``register_for_auto_class`` (done below), ``save_pretrained`` copies this file and everything it imports
relatively into the model folder, so that
``AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)`` works without hf_distill.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .cifar_common import CIFAR_ARCHITECTURES, CifarBackbone, get_architecture
from .cifar_mobilenetv2 import mobilenetv2  # noqa: F401  (fills the registry)
from .cifar_resnet import resnet20  # noqa: F401
from .cifar_shufflenet import shufflenetv1  # noqa: F401
from .cifar_vgg import vgg8  # noqa: F401
from .cifar_wrn import wrn_16_1  # noqa: F401
from .configuration_cifar import CifarConfig


class CifarPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight init delegated to the zoo backbone's own scheme."""

    config_class = CifarConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # the loss is a plain mean over the batch: Trainer must not pass num_items_in_batch / skip its own scaling
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise ``module`` with the architecture's original scheme (Kaiming, Normal(0, 0.01), ...)."""
        backbone = getattr(self, "model", None)
        if isinstance(backbone, CifarBackbone):
            backbone.init_module(module)


class CifarForImageClassification(CifarPreTrainedModel):
    """A zoo backbone (``self.model``) with the transformers image-classification interface.

    Args:
        config: a :class:`CifarConfig`; the backbone is built with ``num_classes=config.num_labels``.
    """

    def __init__(self, config: CifarConfig) -> None:
        super().__init__(config)
        factory = get_architecture(config.architecture)
        self.model: CifarBackbone = factory(num_classes=config.num_labels, **dict(config.arch_kwargs or {}))
        self.post_init()

    @property
    def feature_names(self) -> list[str]:
        """Names of the tappable feature maps, shallow to deep."""
        return self.model.feature_names

    @property
    def num_features(self) -> int:
        """Dimension of the pooled embedding."""
        return self.model.num_features

    def forward_taps(
        self, pixel_values: Tensor, preact: bool = False
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """One forward pass returning (maps, embedding, logits); see :meth:`CifarBackbone.forward_taps`.

        Args:
            pixel_values: normalized images (B, 3, H, W).
            preact: pre-activation stage maps (RepDistiller's ``preact=True``).

        Returns:
            (ordered dict name -> map, embedding (B, num_features), logits (B, num_labels)).
        """
        return self.model.forward_taps(pixel_values, preact=preact)

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.config.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
        if problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).squeeze(-1))
        if problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    def forward(
        self,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple[Tensor, ...]:
        """Classify normalized images.

        Args:
            pixel_values: (B, 3, H, W) images normalized with ``config.image_mean`` / ``config.image_std``.
            labels: optional targets; class indices give a cross-entropy loss.
            output_hidden_states: also return the feature maps (post-activation), in ``feature_names`` order.
            return_dict: return an :class:`ImageClassifierOutput` (default) or a tuple.

        Returns:
            ``ImageClassifierOutput(loss, logits, hidden_states)``.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        if return_dict is None:
            return_dict = self.config.return_dict if self.config.return_dict is not None else True
        hidden_states = None
        if output_hidden_states:
            maps, _, logits = self.model.forward_taps(pixel_values)
            hidden_states = tuple(maps.values())
        else:
            logits = self.model(pixel_values)
        loss = self._loss(logits, labels) if labels is not None else None
        if not return_dict:
            out = (logits,) if hidden_states is None else (logits, hidden_states)
            return (loss, *out) if loss is not None else out
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)


def create_cifar_model(
    architecture: str,
    num_labels: int,
    id2label: dict[int, str] | None = None,
    **arch_kwargs: Any,
) -> CifarForImageClassification:
    """Build a randomly initialised zoo classifier.

    Args:
        architecture: short name (``resnet56``, ``wrn_40_2``, ...) or ``cifar_``-prefixed timm name.
        num_labels: number of classes.
        id2label: optional class names (``{0: "airplane", ...}``); must have ``num_labels`` entries.
        **arch_kwargs: extra keyword arguments of the architecture factory.

    Returns:
        the model (training mode, as transformers leaves a fresh model).
    """
    if id2label is not None:
        if len(id2label) != num_labels:
            raise ValueError(f"id2label has {len(id2label)} entries but num_labels={num_labels}.")
        id2label = {int(k): str(v) for k, v in id2label.items()}
    else:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    config = CifarConfig(architecture=architecture, id2label=id2label, arch_kwargs=arch_kwargs)
    return CifarForImageClassification(config)


# save_pretrained writes an auto_map so that the folder loads with trust_remote_code=True anywhere
CifarConfig.register_for_auto_class()
CifarForImageClassification.register_for_auto_class("AutoModelForImageClassification")

# In this process the Auto classes learn the model type without remote code. Only the library's own copy of
# this file does it: a copy imported as remote code (transformers_modules...) must not take over the name.
if __name__.split(".")[0] == "hf_distill":
    AutoConfig.register(CifarConfig.model_type, CifarConfig, exist_ok=True)
    AutoModelForImageClassification.register(CifarConfig, CifarForImageClassification, exist_ok=True)

__all__ = [
    "CIFAR_ARCHITECTURES",
    "CifarConfig",
    "CifarForImageClassification",
    "CifarPreTrainedModel",
    "create_cifar_model",
]
