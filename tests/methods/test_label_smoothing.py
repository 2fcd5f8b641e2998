"""--label_smoothing_factor smooths the objective's cross-entropy with the labels. The Trainer's own loss applies it
(``label_smoother``); the distillation loss replaces that loss, so without this it was silently ignored."""

import torch
import torch.nn.functional as F

from hf_distill.features import Features
from hf_distill.methods import DistillationObjective, StepInfo


def test_the_objective_smooths_its_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    obj = DistillationObjective.from_names("none")
    plain = obj(Features(logits=logits), None, StepInfo(labels=labels))[1]["ce"]
    obj.label_smoothing = 0.1
    smoothed = obj(Features(logits=logits), None, StepInfo(labels=labels))[1]["ce"]
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, labels, label_smoothing=0.1))
    assert not torch.allclose(smoothed, plain)
    assert obj.describe()["label_smoothing"] == 0.1


def test_the_trainer_passes_label_smoothing_factor_to_the_objective(tmp_path, tiny):
    from hf_distill import DistillationTrainer
    from tests.helpers import CIFAR_SPEC, trainer_args
    from tests.methods._common import zoo_model

    trainer = DistillationTrainer(
        model=zoo_model("resnet8"),
        teacher=zoo_model("resnet20", seed=1),
        objective=DistillationObjective.from_names("kd"),
        args=trainer_args(tmp_path / "out", label_smoothing_factor=0.1, max_steps=1),
        train_dataset=tiny.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
    )
    assert trainer.model.objective.label_smoothing == 0.1
    trainer.train()
    assert trainer.model.objective.describe()["label_smoothing"] == 0.1
