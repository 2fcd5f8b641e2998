"""Test-only building blocks (not part of the library)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from hf_distill.methods import DistillationMethod, FeatureNeeds, InitStage, MethodNeeds, register_method
from hf_distill.methods.registry import METHODS
from hf_distill.models.normalization import InputSpec

CIFAR_SPEC = InputSpec((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261), 32)


def timm_model(
    arch: str = "test_resnet", num_labels: int = 10, seed: int = 0
) -> TimmWrapperForImageClassification:
    torch.manual_seed(seed)
    cfg = TimmWrapperConfig(architecture=arch, num_labels=num_labels)
    return TimmWrapperForImageClassification(cfg)


def smooth_model(num_labels: int = 10, seed: int = 0) -> TimmWrapperForImageClassification:
    """timm's tiny ``test_vit`` at 32 px: no BatchNorm (nothing couples the rows of a batch) and no kink (GELU,
    LayerNorm and softmax instead of ReLU and max): two runs whose arithmetic differs by rounding stay that close,
    where in a ReLU network an activation within rounding of 0 can switch sides and change a whole gradient."""
    torch.manual_seed(seed)
    cfg = TimmWrapperConfig(architecture="test_vit", num_labels=num_labels, model_args={"img_size": 32})
    return TimmWrapperForImageClassification(cfg)


class StatefulProbe(DistillationMethod):
    """Has a trainable head and a buffer that the loss depends on: what a resume must restore exactly."""

    def __init__(self, momentum: float = 0.5) -> None:
        super().__init__()
        self.momentum = momentum

    def needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=FeatureNeeds(embedding=True), teacher=FeatureNeeds(embedding=True), index=True
        )

    def setup(self, student, teacher, data) -> None:
        self.head = nn.Linear(student.embedding[0], teacher.embedding[0])
        self.register_buffer("center", torch.zeros(teacher.embedding[0]))
        self.register_buffer("seen", torch.zeros(data.num_samples))

    def forward(self, student, teacher, step):
        t = teacher.embedding
        with torch.no_grad():
            self.center.mul_(self.momentum).add_((1 - self.momentum) * t.mean(0))
            self.seen[step.index] += 1
        return {"probe": F.mse_loss(self.head(student.embedding), t - self.center)}


class InitStageProbe(StatefulProbe):
    """Like StatefulProbe, with an initialization stage that trains only its head."""

    init_stage = InitStage(epochs=1, learning_rate=0.05, train_student=False)

    def init_stage_loss(self, student, teacher, step):
        return {"probe": F.mse_loss(self.head(student.embedding), teacher.embedding)}

    def on_init_stage_end(self) -> None:
        self.ended = True


#: the test-only methods, registered by the ``probe_methods`` fixture (tests/conftest.py) for the tests that use them
PROBES = {"test_probe": StatefulProbe, "test_init_probe": InitStageProbe}


@contextlib.contextmanager
def registered_methods(methods: dict[str, type[DistillationMethod]]) -> Iterator[None]:
    """Register ``methods`` for the duration of the block, then leave the registry as it was."""
    added = [n for n in methods if n not in METHODS]
    for n in added:
        register_method(n)(methods[n])
    try:
        yield
    finally:
        for n in added:
            METHODS.pop(n, None)


def tiny_splits(subset_train, subset_test, n_eval: int = 32):
    """The small prepared (train, eval) pair the trainer-level tests share: 64 augmented training rows of the
    embedded subset and ``n_eval`` test rows, at the CIFAR normalization."""
    from hf_distill.data.datasets import prepare_split

    tr = prepare_split(subset_train, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=64)
    te = prepare_split(subset_test, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, False, max_samples=n_eval)
    return tr, te


def trainer_args(output_dir, **overrides):
    """``TrainingArguments`` of the short CPU runs of these tests: 2 SGD steps at 0.05 with batches of 16, a log
    every step, no checkpoints, seed 0. ``overrides`` replace any of them; an override of ``None`` leaves that
    argument at the transformers default."""
    from transformers import TrainingArguments

    args: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=16,
        max_steps=2,
        learning_rate=0.05,
        optim="sgd",
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    args.update(overrides)
    return TrainingArguments(**{k: v for k, v in args.items() if v is not None})


def recipe_error_line(recipe, capsys, argv) -> str:
    """Run ``recipe.main(argv)``, which must stop on bad input with exit status 2 and exactly one ``error: ...``
    line on stderr (no traceback); return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        recipe.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err  # one line, no traceback
    return errors[0]


class CacheRows:
    """The smallest training set a teacher cache accepts: a size and the current epoch."""

    epoch, seed = 0, 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def load_recipe(module_name: str = "distill_recipe"):
    """``recipes/distill.py`` imported as a module (the recipe is a script, not part of the package)."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location(module_name, REPO / "recipes" / "distill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_image_dataset(
    folder,
    image_column: str,
    label_column: str,
    class_names: list[str],
    rows: dict[str, int],
    size: int,
    fmt: str,
) -> None:
    """A dataset folder of random images laid out as a Hub image dataset: one ``<split>.parquet`` per entry of
    ``rows`` (split -> row count), ``size x size`` images encoded as ``fmt`` (PNG, JPEG), random labels; seeded."""
    import io

    import datasets
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    features = datasets.Features(
        {image_column: datasets.Image(), label_column: datasets.ClassLabel(names=class_names)}
    )
    for split, n in rows.items():
        images = []
        for _ in range(n):
            buf = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format=fmt)
            images.append({"bytes": buf.getvalue(), "path": None})
        labels = rng.integers(0, len(class_names), n).tolist()
        ds = datasets.Dataset.from_dict({image_column: images, label_column: labels}, features=features)
        ds.to_parquet(str(folder / f"{split}.parquet"))
