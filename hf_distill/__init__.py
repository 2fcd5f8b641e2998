"""hf_distill: knowledge distillation for vision models, built on transformers.Trainer, timm and Accelerate."""

__version__ = "0.1.0.dev0"

from .losses import DistillationLoss, DistillationObjective, register_method  # noqa: E402
from .trainer import DistillationModel, DistillationTrainer, build_distillation_model  # noqa: E402

__all__ = [
    "DistillationLoss",
    "DistillationModel",
    "DistillationObjective",
    "DistillationTrainer",
    "build_distillation_model",
    "register_method",
]
