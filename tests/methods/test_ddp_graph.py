"""The DDP graph policy (hf_distill/training/ddp_graph.py): a static graph unless a step may use other parameters than
the first, or the first step is not synchronized. The 2-process runs of tests/recipes/test_multiprocess.py train
under it (kd, ab and skd with a static graph; icd with the per-step search)."""

import pytest

from hf_distill.methods import DistillationObjective
from hf_distill.training.ddp_graph import choose_ddp_graph, skippable_trainable_methods


def build(tmp_path, tiny, method, **overrides):
    from hf_distill import DistillationTrainer
    from tests.helpers import CIFAR_SPEC, trainer_args
    from tests.methods._common import zoo_model

    return DistillationTrainer(
        model=zoo_model("resnet8"),
        teacher=zoo_model("resnet20", seed=1),
        objective=DistillationObjective.from_names(method),
        args=trainer_args(tmp_path / "out", **overrides),
        train_dataset=tiny.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
    )


@pytest.mark.parametrize("method", ["kd", "fitnet", "crd"])
def test_a_run_whose_steps_use_the_same_parameters_gets_a_static_graph(tmp_path, tiny, method):
    args = build(tmp_path, tiny, method).args
    assert args.ddp_static_graph is True and args.ddp_find_unused_parameters is False


def test_a_method_with_trainable_parts_left_out_of_short_batches_keeps_the_per_step_search(tmp_path, tiny):
    trainer = build(tmp_path, tiny, "icd")
    assert skippable_trainable_methods(trainer.model.objective) == ["icd"]
    assert trainer.args.ddp_static_graph is None and trainer.args.ddp_find_unused_parameters is True
    # without short batches, the same run is static
    args = build(tmp_path, tiny, "icd", dataloader_drop_last=True).args
    assert args.ddp_static_graph is True and args.ddp_find_unused_parameters is False


def test_a_method_skipped_on_short_batches_without_parameters_does_not_matter(tmp_path, tiny):
    trainer = build(tmp_path, tiny, "rkd", per_device_train_batch_size=4)
    assert skippable_trainable_methods(trainer.model.objective) == []
    assert trainer.args.ddp_static_graph is True


def test_gradient_accumulation_keeps_the_per_step_search(tmp_path, tiny):
    args = build(tmp_path, tiny, "kd", gradient_accumulation_steps=2).args
    assert args.ddp_static_graph is None and args.ddp_find_unused_parameters is True


@pytest.mark.parametrize("setting", [{"ddp_find_unused_parameters": False}, {"ddp_static_graph": False}])
def test_the_users_choice_is_kept(tmp_path, tiny, setting):
    args = build(tmp_path, tiny, "kd", **setting).args
    for key, value in setting.items():
        assert getattr(args, key) is value
    assert "as set" in choose_ddp_graph(args, DistillationObjective.from_names("kd"))
