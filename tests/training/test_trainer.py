import os

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_distill import DistillationTrainer
from hf_distill.methods import DistillationObjective
from hf_distill.models.loading import load_model
from hf_distill.training.checkpoints import method_state
from tests.helpers import CIFAR_SPEC, timm_model, tiny_splits, trainer_args

pytestmark = pytest.mark.usefixtures("probe_methods")  # the test-only methods test_probe / test_init_probe


@pytest.fixture(scope="module")
def tiny(subset_train, subset_test):
    return tiny_splits(subset_train, subset_test)


def _args(tmp_path, **kw):
    base = dict(per_device_eval_batch_size=32, max_steps=4, optim_args="momentum=0.9", data_seed=0)
    return trainer_args(tmp_path / "out", **{**base, **kw})


def _trainer(tmp_path, tiny, method="kd", seed=0, teacher=None, **kw):
    tr, te = tiny
    return DistillationTrainer(
        model=timm_model(seed=seed),
        teacher=teacher if teacher is not None else timm_model(seed=100),
        objective=method,
        args=_args(tmp_path, **kw),
        train_dataset=tr.dataset,
        eval_dataset=te.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
    )


def test_teacher_is_frozen_outside_optimizer_and_unchanged(tmp_path, tiny):
    t = _trainer(tmp_path, tiny)
    before = {k: v.clone() for k, v in t.teacher.state_dict().items()}
    t.train()
    opt_ids = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    for p in t.teacher.parameters():
        assert not p.requires_grad and p.grad is None and id(p) not in opt_ids
    assert not t.teacher.training
    for k, v in t.teacher.state_dict().items():  # BN running statistics included
        assert torch.equal(v, before[k]), k
    student_ids = {id(p) for p in t.model.student.parameters()}
    assert student_ids <= opt_ids
    logs = [h for h in t.state.log_history if "loss" in h]
    assert all("loss_kd" in h and "loss_ce" in h for h in logs)


def test_loss_parts_are_optimized_and_checkpointed(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, method="test_probe", save_strategy="steps", save_steps=2)
    probe = t.model.objective.methods["test_probe"]
    head_before = probe.head.weight.detach().clone()
    t.train()
    opt_ids = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in probe.head.parameters()} <= opt_ids
    assert not torch.equal(head_before, probe.head.weight)
    ckpt = tmp_path / "out" / "checkpoint-4"
    state = method_state(str(ckpt))
    assert torch.equal(state["objective.methods.test_probe.center"], probe.center)
    assert torch.equal(state["objective.methods.test_probe.head.weight"], probe.head.weight.detach())
    assert state["objective.methods.test_probe.seen"].sum() == 4 * 16  # every sample of 4 batches counted
    # the checkpoint is upstream's: the whole container (student.* and the methods' keys) in one file
    files = set(os.listdir(ckpt))
    assert {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
    } <= files
    saved = safetensors.torch.load_file(str(ckpt / "model.safetensors"))
    assert saved.keys() == t.model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in t.model.state_dict().items())


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_training_stop = True


def _flat_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("stop", [2, 4], ids=["mid-epoch", "epoch-boundary"])
def test_resume_equals_uninterrupted_run(tmp_path, tiny, stop):
    # 64 samples / 16 per batch = 4 steps per epoch: step 2 is in the middle of an epoch, step 4 at its end
    kw = dict(
        method="test_probe", max_steps=8, save_strategy="steps", save_steps=stop, lr_scheduler_type="linear"
    )
    full = _trainer(tmp_path / "a", tiny, **kw)
    full.train()
    ref = _flat_state(full)

    part = _trainer(tmp_path / "b", tiny, **kw)
    part.add_callback(_StopAt(stop))
    part.train()
    assert part.state.global_step == stop
    # another initialization: everything must come from the checkpoint
    resumed = _trainer(tmp_path / "b", tiny, seed=7, **kw)
    resumed.train(resume_from_checkpoint=True)  # the last checkpoint in output_dir
    got = _flat_state(resumed)
    assert ref.keys() == got.keys()
    assert any("test_probe.center" in k for k in got) and any("test_probe.seen" in k for k in got)
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-6, rtol=0), k


def test_an_interrupted_save_is_recognised_and_never_resumed(tmp_path, tiny, monkeypatch):
    """Upstream writes a checkpoint in place; its trainer_state.json comes last, so a save interrupted before it
    leaves a folder that every resume path recognises as incomplete and skips."""
    from hf_distill.run.run_record import resolve_resume
    from hf_distill.training.checkpoints import is_complete_checkpoint, latest_complete_checkpoint

    t = _trainer(tmp_path, tiny, method="test_probe", save_strategy="steps", save_steps=2, max_steps=4)

    def boom(output_dir):
        if output_dir.endswith("checkpoint-4"):
            raise OSError("disk full")

    monkeypatch.setattr(t, "_save_rng_state", boom)  # the test's fault injection, not the library's
    with pytest.raises(OSError, match="disk full"):
        t.train()
    out = tmp_path / "out"
    assert is_complete_checkpoint(str(out / "checkpoint-2")) and not is_complete_checkpoint(
        str(out / "checkpoint-4")
    )
    assert latest_complete_checkpoint(str(out)) == (str(out / "checkpoint-2"), [str(out / "checkpoint-4")])
    assert resolve_resume("true", str(out)) == str(out / "checkpoint-2")


def test_teacher_shapes_are_probed_through_the_training_input(tmp_path, tiny):
    """A 32 px zoo student and a timm teacher whose own spec says 160 px, fed 32 px in training (teacher_input):
    the methods must be built from the maps the teacher produces in training, not from a 32 -> 160 px resize."""
    obj = DistillationObjective.from_names("fitnet")
    seen = {}
    build = obj.build

    def recording_build(s_spec, t_spec, info):
        seen["teacher"] = t_spec
        return build(s_spec, t_spec, info)

    obj.build = recording_build
    t = DistillationTrainer(
        model=load_model("cifar_resnet8", num_labels=10),
        teacher=timm_model(seed=100),
        objective=obj,
        args=_args(tmp_path),
        train_dataset=tiny[0].dataset,
        teacher_input=CIFAR_SPEC,
    )
    batch = t.data_collator([tiny[0].dataset[0]])
    maps = t.teacher_features(batch["pixel_values"]).maps
    assert seen["teacher"].maps == {k: tuple(v.shape[1:]) for k, v in maps.items()}
    assert all(shape[-1] < 160 // 4 for shape in seen["teacher"].maps.values())  # not probed at 160 px


def test_evaluation_reports_student_and_teacher_accuracy_once(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, max_steps=2)
    t.train()
    m1 = t.evaluate()
    m2 = t.evaluate()
    assert 0 <= m1["eval_accuracy"] <= 1 and "eval_top5_accuracy" in m1
    assert m1["eval_teacher_accuracy"] == m2["eval_teacher_accuracy"]
    assert sum("eval_teacher_accuracy" in h for h in t.state.log_history) == 1


def test_save_model_writes_the_student_alone(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, method="test_probe", max_steps=1)
    t.train()
    out = tmp_path / "export"
    t.save_model(str(out))
    assert not any(n.startswith("_") for n in os.listdir(out))  # no scratch folder left
    sd = safetensors.torch.load_file(str(out / "model.safetensors"))
    # a timm student is exported in timm's own format: exactly the timm model's weights, nothing of the methods
    student = t.model.student.timm_model.state_dict()
    assert sd.keys() == student.keys()
    assert all(torch.equal(sd[k], v) for k, v in student.items())
    reloaded = AutoModelForImageClassification.from_pretrained(str(out))
    x = torch.randn(2, 3, 32, 32)
    t.model.student.eval()
    assert torch.allclose(reloaded.eval()(x).logits, t.model.student(x).logits, atol=1e-6)


def test_gradient_accumulation_keeps_working(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, max_steps=2, gradient_accumulation_steps=2, per_device_train_batch_size=8)
    t.train()
    assert t.state.global_step == 2
    losses = [h["loss"] for h in t.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)


def test_init_stage_runs_before_training_and_is_recorded(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, method="test_init_probe", max_steps=2, save_strategy="steps", save_steps=2)
    probe = t.model.objective.methods["test_init_probe"]
    student_before = {k: v.clone() for k, v in t.model.student.state_dict().items()}
    head_before = probe.head.weight.detach().clone()
    t.run_init_stage()
    assert getattr(probe, "ended", False) and bool(t.model.init_stage_done)
    assert not torch.equal(head_before, probe.head.weight)  # the stage trained the head...
    for k, v in t.model.student.state_dict().items():  # ...and left the student (BN statistics too) alone
        assert torch.equal(v, student_before[k]), k
    rec = [h for h in t.state.log_history if "init_stage_loss" in h]
    assert len(rec) == 1 and rec[0]["init_stage_steps"] == 4  # 64 samples / 16 per batch, 1 epoch
    t.train()  # the main run does not repeat it
    assert sum("init_stage_loss" in h for h in t.state.log_history) == 1
    state = method_state(str(tmp_path / "out" / "checkpoint-2"))
    assert bool(state["init_stage_done"])


def test_class_count_mismatch_is_a_clear_error(tmp_path, tiny):
    with pytest.raises(ValueError, match="teacher predicts 100 classes but the student 10"):
        _trainer(tmp_path, tiny, teacher=timm_model(num_labels=100))


def test_teacherless_method_needs_no_teacher_and_kd_does(tmp_path, tiny):
    tr, _ = tiny
    with pytest.raises(ValueError, match="need a teacher"):
        DistillationTrainer(
            model=timm_model(), objective="kd", args=_args(tmp_path), train_dataset=tr.dataset
        )
    t = DistillationTrainer(
        model=timm_model(), objective="none", args=_args(tmp_path, max_steps=1), train_dataset=tr.dataset
    )
    t.train()
    assert t.state.global_step == 1


def test_method_needing_row_index_without_index(tmp_path, tiny):
    from hf_distill.data.datasets import collate

    def collate_no_index(rows):
        batch = collate(rows)
        batch.pop("index")
        return batch

    with pytest.raises(ValueError, match="need the dataset row index"):
        DistillationTrainer(
            model=timm_model(),
            teacher=timm_model(seed=1),
            objective="test_probe",
            args=_args(tmp_path),
            train_dataset=tiny[0].dataset,
            data_collator=collate_no_index,
            student_input=CIFAR_SPEC,
            teacher_input=CIFAR_SPEC,
        )


def test_a_transformers_model_trains_as_student_with_feature_methods(tmp_path, tiny):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10, image_size=32)
    student = ResNetForImageClassification(cfg)
    tr, te = tiny
    t = DistillationTrainer(
        model=student,
        teacher=timm_model(seed=100),
        # logits, embedding and named maps; the HF student has 2 stages, the timm teacher 4: pick two of them
        objective=DistillationObjective.from_names(
            "kd,rkd,at", method_kwargs={"at": {"teacher_layers": "layer3,layer4"}}
        ),
        args=_args(tmp_path, max_steps=2),
        train_dataset=tr.dataset,
        eval_dataset=te.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
    )
    at = t.model.objective.methods["at"]
    assert at.student_layer_names == ["hidden_states.1", "hidden_states.2"]  # the stages after the embedding
    assert at.teacher_layer_names == ["layer3", "layer4"]
    before = {k: v.clone() for k, v in student.state_dict().items()}
    t.train()
    logs = [h for h in t.state.log_history if "loss" in h]
    assert logs and all(k in logs[-1] for k in ("loss_kd", "loss_rkd_dist", "loss_at"))
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    out = tmp_path / "export"
    t.save_model(str(out))
    assert (
        type(AutoModelForImageClassification.from_pretrained(str(out))).__name__
        == "ResNetForImageClassification"
    )


def test_building_a_trainer_registers_the_process_group_teardown(tmp_path, tiny, monkeypatch):
    from hf_distill.training import process_group as processes

    registered = []
    monkeypatch.setattr(processes, "_registered", False)
    monkeypatch.setattr(processes.atexit, "register", registered.append)
    _trainer(tmp_path, tiny)
    assert registered == [processes.destroy_process_group_if_alive]
