"""transformers configuration of the CIFAR zoo models (``model_type = "hf_distill_cifar"``).

Imports only the standard library, ``transformers`` and the zoo files of this folder (relative imports), so it
can be shipped as remote code in a saved model folder.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from .cifar_common import CIFAR_ARCHITECTURES, CIFAR_DEFAULT_CFGS
from .cifar_mobilenetv2 import mobilenetv2  # noqa: F401  (fills the registry)
from .cifar_resnet import resnet20  # noqa: F401
from .cifar_shufflenet import shufflenetv1  # noqa: F401
from .cifar_vgg import vgg8  # noqa: F401
from .cifar_wrn import wrn_16_1  # noqa: F401


class CifarConfig(PreTrainedConfig):
    """Configuration of a CIFAR zoo classifier.

    Args:
        architecture: short zoo name (``resnet56``, ``resnet32x4``, ``wrn_40_2``, ``resnet56_a``, ...).
        image_size: input resolution (32).
        image_mean: normalization mean; None = the architecture's default (CIFAR-100 statistics for the
            benchmark models, ImageNet statistics for the ``_a`` models).
        image_std: normalization std; None = the architecture's default.
        arch_kwargs: extra keyword arguments of the architecture factory (e.g. ``{"drop_rate": 0.3}``).
        **kwargs: the usual :class:`~transformers.PreTrainedConfig` arguments (``num_labels``, ``id2label``, ...).

    Raises:
        ValueError: unknown architecture (the message lists the valid names).
    """

    model_type = "hf_distill_cifar"

    def __init__(
        self,
        architecture: str = "resnet20",
        image_size: int = 32,
        image_mean: list[float] | tuple[float, ...] | None = None,
        image_std: list[float] | tuple[float, ...] | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if architecture.startswith("cifar_"):
            architecture = architecture[len("cifar_") :]
        if architecture not in CIFAR_ARCHITECTURES:
            raise ValueError(
                f"Unknown CIFAR architecture {architecture!r}; valid names are: {', '.join(CIFAR_ARCHITECTURES)}."
            )
        default = CIFAR_DEFAULT_CFGS[architecture]
        self.architecture = architecture
        self.image_size = int(image_size)
        self.image_mean = [float(v) for v in (default["mean"] if image_mean is None else image_mean)]
        self.image_std = [float(v) for v in (default["std"] if image_std is None else image_std)]
        self.arch_kwargs = dict(arch_kwargs or {})
        if kwargs.get("id2label") is not None and kwargs.get("label2id") is None:
            kwargs["label2id"] = {str(v): int(k) for k, v in kwargs["id2label"].items()}
        super().__init__(**kwargs)


__all__ = ["CifarConfig"]
