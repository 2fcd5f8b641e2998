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


def settings(trainer):
    return trainer.ddp_settings["ddp_static_graph"], trainer.ddp_settings["ddp_find_unused_parameters"]


def handed_to_ddp(trainer) -> dict:
    """What the Accelerator will pass to DistributedDataParallel."""
    return trainer.accelerator.ddp_handler.to_kwargs()


@pytest.mark.parametrize("method", ["kd", "fitnet", "crd"])
def test_a_run_whose_steps_use_the_same_parameters_gets_a_static_graph(tmp_path, tiny, method):
    trainer = build(tmp_path, tiny, method)
    assert settings(trainer) == (True, False)
    assert handed_to_ddp(trainer).get("static_graph") is True
    # the caller's arguments keep their own values (they may build another trainer, for another objective)
    assert trainer.args.ddp_static_graph is None and trainer.args.ddp_find_unused_parameters is None


def test_a_method_with_trainable_parts_left_out_of_short_batches_keeps_the_per_step_search(tmp_path, tiny):
    trainer = build(tmp_path, tiny, "icd")
    assert skippable_trainable_methods(trainer.model.objective) == ["icd"]
    assert settings(trainer) == (None, True) and handed_to_ddp(trainer).get("find_unused_parameters") is True
    # without short batches, the same run is static
    assert settings(build(tmp_path, tiny, "icd", dataloader_drop_last=True)) == (True, False)


def test_a_method_skipped_on_short_batches_without_parameters_does_not_matter(tmp_path, tiny):
    trainer = build(tmp_path, tiny, "rkd", per_device_train_batch_size=4)
    assert skippable_trainable_methods(trainer.model.objective) == []
    assert settings(trainer) == (True, False)


def test_gradient_accumulation_keeps_the_per_step_search(tmp_path, tiny):
    assert settings(build(tmp_path, tiny, "kd", gradient_accumulation_steps=2)) == (None, True)


@pytest.mark.parametrize("setting", [{"ddp_find_unused_parameters": False}, {"ddp_static_graph": False}])
def test_the_users_choice_is_kept(tmp_path, tiny, setting):
    trainer = build(tmp_path, tiny, "kd", **setting)
    for key, value in setting.items():
        assert trainer.ddp_settings[key] is value and getattr(trainer.args, key) is value
    assert "as set" in choose_ddp_graph(trainer.args, DistillationObjective.from_names("kd"))[1]


def test_the_init_stage_follows_the_main_runs_choice(tmp_path, tiny):
    from hf_distill.training.init_stage import init_stage_args

    trainer = build(tmp_path, tiny, "ab")
    static = init_stage_args(trainer.args, 1.0, 0.05, trainer.ddp_settings["ddp_static_graph"])
    assert static.ddp_static_graph is True and static.ddp_find_unused_parameters is False
    searched = init_stage_args(trainer.args, 1.0, 0.05, None)
    assert searched.ddp_static_graph is None and searched.ddp_find_unused_parameters is True
