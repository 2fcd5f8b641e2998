"""hf_distill: knowledge distillation for vision models, built on transformers.Trainer, timm and Accelerate.

Importing the package makes the CIFAR zoo available the way ``import timm`` makes timm's models available:
``timm.create_model("cifar_resnet20")`` and ``AutoModelForImageClassification`` / ``AutoConfig`` for the model type
``hf_distill_cifar`` work right after ``import hf_distill``.
"""

__version__ = "0.1.0.dev0"

from .distillation_model import DistillationModel, build_distillation_model  # noqa: E402
from .losses import DistillationLoss, DistillationObjective, register_method  # noqa: E402
from .models import timm_cifar as _timm_cifar  # noqa: E402, F401  (registers the zoo with timm and the Auto classes)
from .trainer import DistillationTrainer, NonFiniteLossError  # noqa: E402

__all__ = [
    "DistillationLoss",
    "DistillationModel",
    "DistillationObjective",
    "DistillationTrainer",
    "NonFiniteLossError",
    "build_distillation_model",
    "register_method",
]
