"""Representation transfer: how well a trained model's penultimate features serve a new dataset.

Two protocols, as in the CRD and ICD papers' transfer experiments:

* **linear probe**: the model is frozen, its penultimate feature (the ``embedding`` of
  :mod:`hf_distill.models.taps`, the input of its classifier) is extracted once for every image, standardized with
  the training split's statistics, and a multinomial logistic regression is fitted on the training split with
  L-BFGS; test top-1/top-5 come from that classifier;
* **fine-tune**: the whole model with a new head is trained on the new dataset (the
  :class:`~hf_distill.training.trainer.DistillationTrainer` with method ``none``), then evaluated.

Images are read at the model's input size and normalization (:func:`hf_distill.hub.processor.model_input_spec`),
so a CIFAR model probes 32 px images and a 224 px timm model sees them resized. Every model kind that
:func:`hf_distill.models.loading.load_model` builds (CIFAR zoo, timm, transformers) works. A result becomes its own
``model-index`` entry (task name ``transfer, linear probe`` or ``transfer, fine-tune``) of the model's card.
"""

from .finetune import FinetuneConfig, classifier_layer, finetune, set_classifier
from .probe import (
    LinearProbe,
    ProbeConfig,
    extract_features,
    fit_linear_probe,
    linear_probe,
    load_frozen_model,
)
from .result import (
    FINETUNE,
    LINEAR_PROBE,
    TASK_NAMES,
    TASK_TYPES,
    TransferError,
    TransferResult,
    card_path,
    write_to_card,
)
from .transfer_data import (
    TransferData,
    load_transfer_data,
    parse_classes,
    prepare,
    select_classes,
    write_class_subset,
)

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
