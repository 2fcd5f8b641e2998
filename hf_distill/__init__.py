"""hf_distill: knowledge distillation for vision models, built on transformers.Trainer, timm and Accelerate.

Importing the package makes the CIFAR zoo available the way ``import timm`` makes timm's models available:
``timm.create_model("cifar_resnet20")`` and ``AutoModelForImageClassification`` / ``AutoConfig`` for the model type
``hf_distill_cifar`` work right after ``import hf_distill``.
"""

__version__ = "0.1.0.dev0"

from . import _moved  # noqa: E402

_moved.install()  # old module paths (hf_distill.trainer, hf_distill.losses, ...) keep importing, with a warning

from .methods import DistillationMethod, DistillationObjective, register_method  # noqa: E402
from .models import timm_cifar as _timm_cifar  # noqa: E402, F401  (registers the zoo with timm and the Auto classes)
from .run.lifecycle import distill  # noqa: E402
from .training.distillation_model import DistillationModel, build_distillation_model  # noqa: E402
from .training.outputs import DEFAULT_EXPORT_CALLBACKS as _DEFAULT_EXPORT_CALLBACKS  # noqa: E402
from .training.outputs import ExportCallback  # noqa: E402
from .training.trainer import DistillationTrainer, NonFiniteLossError  # noqa: E402


def _hub_callback() -> ExportCallback:
    """The Hub layer's callback (card, processor, plots, scanned push), imported when the first trainer is built,
    so that neither the core nor ``import hf_distill`` loads the Hub layer."""
    from .hub.callback import HubCallback

    return HubCallback()


# The package is the layer above the core and the Hub layer: it attaches the Hub layer to every trainer, so that a
# final save writes the card and push_to_hub uploads with the Hub layer's checks, without the core importing it.
if not any(getattr(f, "__qualname__", "") == _hub_callback.__qualname__ for f in _DEFAULT_EXPORT_CALLBACKS):
    _DEFAULT_EXPORT_CALLBACKS.append(_hub_callback)


def __getattr__(name: str):
    if name == "DistillationLoss":  # the base class's name before 0.1.0.dev0
        _moved.warn_moved("hf_distill.DistillationLoss", "hf_distill.DistillationMethod")
        return DistillationMethod
    if name == "HubCallback":  # public, without loading the Hub layer at import
        from .hub.callback import HubCallback

        return HubCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DistillationMethod",
    "DistillationModel",
    "DistillationObjective",
    "DistillationTrainer",
    "NonFiniteLossError",
    "HubCallback",
    "build_distillation_model",
    "distill",
    "register_method",
]
