"""Checkpoints are upstream's (DistillationTrainer overrides no private Trainer method): rotation, the best
checkpoint kept and loaded back into the whole container, and the init stage's arguments."""

import os

import pytest
import safetensors.torch
import torch

from hf_distill import DistillationTrainer
from hf_distill.training.init_stage import init_stage_args
from tests.helpers import CIFAR_SPEC, timm_model, tiny_splits, trainer_args

pytestmark = pytest.mark.usefixtures("probe_methods")  # the test-only method test_probe


@pytest.fixture(scope="module")
def tiny(subset_train, subset_test):
    return tiny_splits(subset_train, subset_test, n_eval=16)


def _trainer(tmp_path, tiny, compute_metrics=None, **kw):
    tr, te = tiny
    return DistillationTrainer(
        model=timm_model(seed=0),
        teacher=timm_model(seed=1),
        objective="test_probe",
        args=trainer_args(tmp_path, per_device_eval_batch_size=16, **kw),
        train_dataset=tr.dataset,
        eval_dataset=te.dataset,
        compute_metrics=compute_metrics,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
        report_teacher_accuracy=False,
    )


def _checkpoints(folder) -> list[str]:
    return sorted(
        (n for n in os.listdir(folder) if "checkpoint" in n), key=lambda n: int(n.rsplit("-", 1)[1])
    )


def test_save_total_limit_rotates_old_checkpoints(tmp_path, tiny):
    _trainer(tmp_path, tiny, max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=2).train()
    assert _checkpoints(tmp_path) == ["checkpoint-3", "checkpoint-4"]


def test_best_checkpoint_is_tracked_kept_and_loaded_at_the_end(tmp_path, tiny):
    scores = iter([1.0, 0.0, 0.0, 0.0])  # the first evaluation (step 1) is the best

    def metrics(_):
        return {"score": next(scores)}

    t = _trainer(
        tmp_path,
        tiny,
        compute_metrics=metrics,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="score",
    )
    t.train()
    best = tmp_path / "checkpoint-1"
    assert t.state.best_model_checkpoint == str(best) and t.state.best_global_step == 1
    assert _checkpoints(tmp_path) == ["checkpoint-1", "checkpoint-4"]  # rotation never deletes the best
    saved = safetensors.torch.load_file(str(best / "model.safetensors"))
    container = t.model.state_dict()
    assert saved.keys() == container.keys()
    assert all(torch.equal(saved[k], v) for k, v in container.items())  # the best, methods' state included
    last = safetensors.torch.load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    assert not all(torch.equal(last[k], v) for k, v in container.items() if k.startswith("student."))


def test_init_stage_arguments_are_the_main_runs_with_the_stage_overrides(tmp_path):
    main = trainer_args(
        tmp_path,
        optim_args="momentum=0.9",
        weight_decay=5e-4,
        gradient_accumulation_steps=2,
        max_grad_norm=5.0,
        data_seed=3,
        eval_strategy="steps",
        save_strategy="steps",
        load_best_model_at_end=True,
        lr_scheduler_type="cosine",
        warmup_steps=3,
    )
    stage = init_stage_args(main, epochs=2.0, learning_rate=0.01)
    for name in (
        "optim",
        "optim_args",
        "weight_decay",
        "gradient_accumulation_steps",
        "max_grad_norm",
        "seed",
    ):
        assert getattr(stage, name) == getattr(main, name), name
    assert stage.data_seed == 3 and stage.per_device_train_batch_size == main.per_device_train_batch_size
    assert (stage.num_train_epochs, stage.max_steps, stage.learning_rate) == (2.0, -1, 0.01)
    assert stage.lr_scheduler_type == "constant" and stage.warmup_steps == 0
    assert stage.save_strategy == "no" and stage.eval_strategy == "no" and not stage.load_best_model_at_end
    assert stage.output_dir == os.path.join(main.output_dir, "init_stage") and not stage.push_to_hub
