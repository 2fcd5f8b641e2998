"""Teacher ensembles (hf_distill.training.ensemble): the mixture, the copy-of-one-teacher equivalences, mixed families,
label checks, resume, the card, the command line and a 2-process launch."""

from __future__ import annotations

import copy

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from transformers import ResNetConfig, ResNetForImageClassification

from hf_distill import DistillationTrainer
from hf_distill.data.labels import align_ensemble_label_spaces
from hf_distill.methods import DistillationObjective
from hf_distill.models.loading import load_model
from hf_distill.run.config import parse_args
from hf_distill.run.run_record import run_signature, signature_differences
from hf_distill.training.ensemble import (
    EnsembleMethod,
    TeacherEnsemble,
    as_teacher,
    ensemble_weights,
    mixture_logits,
)
from tests.conftest import JPEG_TEACHER_DIR, SUBSET, TEACHER_DIR
from tests.helpers import CIFAR_SPEC, smooth_model, timm_model, tiny_splits, trainer_args

pytestmark = pytest.mark.usefixtures("probe_methods")  # the test-only method test_probe


@pytest.fixture(scope="module")
def tiny(subset_train, subset_test):
    return tiny_splits(subset_train, subset_test)


def _trainer(tmp_path, tiny, teacher, method="kd", seed=0, student=None, **kw):
    tr, te = tiny
    torch.manual_seed(seed)  # the student's initialization
    ens = {k: kw.pop(k) for k in ("ensemble_weights", "ensemble_mode", "teacher_cache") if k in kw}
    base = dict(per_device_eval_batch_size=32, max_steps=4, optim_args="momentum=0.9", data_seed=0)
    return DistillationTrainer(
        model=student if student is not None else load_model("cifar_resnet8", num_labels=10),
        teacher=teacher,
        objective=method,
        args=trainer_args(tmp_path / "out", **{**base, **kw}),
        train_dataset=tr.dataset,
        eval_dataset=te.dataset,
        student_input=CIFAR_SPEC,
        **ens,
    )


def _student_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.student.state_dict().items()}


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_mixture_softened_at_t_is_the_weighted_average_of_softened_distributions():
    torch.manual_seed(0)
    a, b = torch.randn(5, 10) * 3, torch.randn(5, 10) * 3
    for t in (1.0, 4.0):
        z = mixture_logits([a, b], (0.7, 0.3), t)
        want = 0.7 * F.softmax(a / t, 1) + 0.3 * F.softmax(b / t, 1)
        assert torch.allclose(F.softmax(z / t, 1), want, atol=1e-6)
    # at T=4 it is not the T=1 mixture softened: the method's temperature matters
    z1 = mixture_logits([a, b], (0.7, 0.3), 1.0)
    assert not torch.allclose(F.softmax(z1 / 4, 1), F.softmax(mixture_logits([a, b], (0.7, 0.3), 4.0) / 4, 1))
    assert ensemble_weights([2, 1], 2) == pytest.approx((2 / 3, 1 / 3))
    with pytest.raises(ValueError, match="one positive weight per teacher"):
        ensemble_weights([1.0], 2)
    with pytest.raises(ValueError, match="one positive weight per teacher"):
        ensemble_weights([1.0, -1.0], 2)
    assert as_teacher(None, [2, 1]) is None  # --baseline: the no-teacher run keeps the ensemble flags
    with pytest.raises(ValueError, match="pass a list of teachers"):
        as_teacher(timm_model(), [2, 1])


@pytest.mark.parametrize(
    "method, mode", [("kd", "distribution"), ("dkd", "distribution"), ("kd", "loss")], ids=lambda x: str(x)
)
def test_an_ensemble_of_a_teacher_and_its_copy_trains_the_single_teacher_student(
    tmp_path, tiny, method, mode
):
    """What may differ, and by how much. In "distribution" mode the pair's target is the mixture
    T log(0.5 softmax(z/T) + 0.5 softmax(z/T)): z/T up to a per-row constant (which no softmax sees) and float32
    rounding of log_softmax, log(0.5) and logsumexp, a few ulps (~1e-7 relative) of each target log-probability. The
    losses (5 to 20, a float32 mean over 16 rows) then differ by ~1e-6 (measured: up to 2e-6); 1e-5 leaves
    room for the loss amplifying the target's rounding by |log p_t - log p_s| (< 10 here). The gradients differ by
    the same ~1e-6 relative, and four SGD steps at lr <= 0.05 move the weights apart by ~1e-7 (measured: 7e-9 on this
    smooth student): 1e-5 is a bound, not a measurement. The student is smooth (:func:`smooth_model`): in a ReLU
    network an activation within rounding of 0 takes the other side of the kink in one run, which changes a step's
    gradient by a whole unit's share (measured on the resnet8 with one thread: 1.3e-5 after four steps), a
    difference no rounding-level tolerance can hold. In "loss" mode each teacher's term is computed alone: exact."""
    teacher = load_model(str(TEACHER_DIR))
    single = _trainer(tmp_path / "single", tiny, copy.deepcopy(teacher), method, student=smooth_model())
    single.train()
    pair = _trainer(
        tmp_path / "pair",
        tiny,
        [copy.deepcopy(teacher), copy.deepcopy(teacher)],
        method,
        student=smooth_model(),
        ensemble_mode=mode,
    )
    assert isinstance(pair.teacher, TeacherEnsemble)
    pair.train()
    assert _losses(single) == pytest.approx(_losses(pair), abs=1e-5)
    ref, got = _student_state(single), _student_state(pair)
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-5, rtol=0), k
    keys = {k for h in pair.state.log_history for k in h if k.startswith(f"loss_{method}")}
    if mode == "loss":  # one term per teacher, each carrying its half
        assert any(k.endswith("_teacher1") for k in keys) and any(k.endswith("_teacher2") for k in keys)
    else:  # one instance on the averaged distribution: the single teacher's terms
        assert not any("teacher" in k for k in keys)


def test_feature_methods_get_one_instance_per_teacher_and_sum_the_terms(tmp_path, tiny):
    teacher = load_model(str(TEACHER_DIR))
    single = _trainer(tmp_path / "s", tiny, copy.deepcopy(teacher), "test_probe")
    pair = _trainer(tmp_path / "p", tiny, [copy.deepcopy(teacher), copy.deepcopy(teacher)], "test_probe")
    method = pair.model.objective.methods["test_probe"]
    assert isinstance(method, EnsembleMethod) and len(method.members) == 2
    head = single.model.objective.methods["test_probe"].head.weight
    for m in method.members:  # every teacher's parts start where the single teacher's do
        assert torch.equal(m.head.weight, head)
    assert method.members[0].head is not method.members[1].head
    batch = pair.data_collator([pair.train_dataset[i] for i in range(8)])
    step = dict(pixel_values=batch["pixel_values"], labels=batch["labels"], index=batch["index"])

    def terms(t):
        t.model.train()
        feats = t.teacher_features(batch["pixel_values"], index=batch["index"])
        return t.model(**step, teacher_features=feats)["loss_terms"]

    s, p = terms(single), terms(pair)
    assert torch.allclose(p["test_probe_probe_teacher1"], s["test_probe_probe"], atol=1e-6)
    assert torch.allclose(p["test_probe_probe_teacher2"], s["test_probe_probe"], atol=1e-6)
    names = set(pair.model.state_dict())
    assert {
        "objective.methods.test_probe.members.0.head.weight",
        "objective.methods.test_probe.members.1.head.weight",
    } <= names


def test_an_initialization_stage_trains_every_teachers_parts(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, [timm_model(seed=1), timm_model(seed=2)], "test_init_probe", max_steps=1)
    members = t.model.objective.methods["test_init_probe"].members
    before = [m.head.weight.detach().clone() for m in members]
    t.run_init_stage()
    assert all(getattr(m, "ended", False) for m in members)  # the end hook reaches every instance
    assert all(not torch.equal(b, m.head.weight) for b, m in zip(before, members))
    logged = {k for h in t.state.log_history for k in h}
    assert "init_stage_loss" in logged


def _mixed_teachers():
    """A CIFAR-zoo ResNet-56 (32 px, CIFAR statistics), a timm model and a transformers ResNet (other sizes,
    ImageNet statistics, other feature widths)."""
    torch.manual_seed(5)
    hf = ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10, image_size=48)
    )
    return [load_model(str(TEACHER_DIR)), timm_model(seed=100), hf]


def test_mixed_families_train_and_resume_exactly(tmp_path, tiny):
    kw = dict(
        method="kd,fitnet", max_steps=4, save_strategy="steps", save_steps=2, ensemble_weights=[2, 1, 1]
    )
    full = _trainer(tmp_path / "a", tiny, _mixed_teachers(), **kw)
    ens = full.teacher
    assert len({a.resize for a in ens.adapters}) == 3  # three input sizes: 32 (as is), timm's and 48
    fit = full.model.objective.methods["fitnet"]
    widths = {m.regressor.conv.out_channels for m in fit.members}
    assert len(fit.members) == 3 and len(widths) >= 2  # one regressor per teacher, sized for its width
    assert len(full.model.objective.methods["kd"].members) == 1  # KD distills the averaged distribution
    full.train()
    ref = {k: v.clone() for k, v in full.model.state_dict().items()}
    for t, fresh in zip(ens.teachers, _mixed_teachers()):  # frozen, and unchanged by training (BN included)
        assert all(not p.requires_grad for p in t.parameters()) and not t.training
        for k, v in fresh.state_dict().items():
            assert torch.equal(t.state_dict()[k], v), k
    ckpt = tmp_path / "a" / "out" / "checkpoint-2"
    saved = safetensors.torch.load_file(str(ckpt / "model.safetensors"))
    assert all(not k.startswith(("teacher", "teachers")) for k in saved)  # no teacher in a checkpoint
    assert set(saved) == set(
        full.model.state_dict()
    )  # the whole container: student.* and every member's parts

    resumed = _trainer(tmp_path / "a", tiny, _mixed_teachers(), seed=7, **kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    got = resumed.model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-6), k


def test_the_card_names_every_teacher_with_its_accuracy(tmp_path, tiny):
    from hf_distill.hub.card import build_card
    from hf_distill.hub.collect import collect_summary

    t = _trainer(
        tmp_path, tiny, [load_model(str(TEACHER_DIR)), load_model(str(JPEG_TEACHER_DIR))], max_steps=1
    )
    t.train()
    metrics = t.evaluate()
    a1, a2 = metrics["eval_teacher1_accuracy"], metrics["eval_teacher2_accuracy"]
    assert a1 == t.evaluate_teacher(member=0)["accuracy"] and a2 == t.evaluate_teacher(member=1)["accuracy"]
    summary = collect_summary(t)
    assert [m["accuracy"] for m in summary.teachers] == [a1, a2]
    assert summary.teacher_accuracy == metrics["eval_teacher_accuracy"]
    assert summary.teacher == f"ensemble of {TEACHER_DIR.name} + {JPEG_TEACHER_DIR.name}"
    card = str(build_card(summary))
    for i, (name, acc) in enumerate(((TEACHER_DIR.name, a1), (JPEG_TEACHER_DIR.name, a2))):
        line = next(x for x in card.splitlines() if f"{name} (teacher {i + 1} of 2" in x)
        assert f"{100 * acc:.2f}%" in line


def test_bad_ensembles_are_clear_errors(tmp_path, tiny):
    five = timm_model(num_labels=5)
    with pytest.raises(ValueError, match="Teacher 2 of the ensemble"):
        _trainer(tmp_path, tiny, [load_model(str(TEACHER_DIR)), five])
    a, b = timm_model(seed=1), timm_model(seed=2)
    a.config.id2label = {i: f"c{i}" for i in range(10)}
    b.config.id2label = {i: f"d{i}" for i in range(10)}
    with pytest.raises(ValueError, match="Teacher 1 of the ensemble: The teacher's class names differ"):
        _trainer(tmp_path, tiny, [a, b])
    # neither the dataset nor the student names the classes: the teachers are compared with each other
    with pytest.raises(ValueError, match="teacher 2's class names differ from the teacher 1's"):
        align_ensemble_label_spaces(timm_model(seed=3), [a, b])
    b.config.id2label = {i: f"c{9 - i}" for i in range(10)}
    with pytest.raises(
        ValueError, match="Teacher 2 of the ensemble names teacher 1's classes in another order"
    ):
        align_ensemble_label_spaces(timm_model(seed=3), [a, b])
    b.config.id2label = dict(a.config.id2label)
    assert align_ensemble_label_spaces(timm_model(seed=3), [a, b]) == [None, None]
    kd_ls = DistillationObjective.from_names("kd", method_kwargs={"kd": {"logit_standardize": True}})
    with pytest.raises(ValueError, match="use --ensemble_mode loss"):
        _trainer(tmp_path, tiny, [timm_model(seed=1), timm_model(seed=2)], method=kd_ls)


def test_the_command_line_takes_repeated_teachers_and_weights(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher: [x, y]\nensemble_weights: [3, 1]\n")
    for argv in (
        ["--teacher", "x", "--teacher", "y", "--ensemble_weights", "3,1"],
        ["--teacher", "x,y", "--ensemble_weights", "3,1"],
        ["--config", str(cfg)],
    ):
        model_args, *_ = parse_args(argv + ["--output_dir", str(tmp_path)])
        assert model_args.teachers() == ["x", "y"] and model_args.ensemble_weight_list() == [3.0, 1.0]
    model_args, *_ = parse_args(["--teacher", "x", "--output_dir", str(tmp_path)])
    assert model_args.teachers() == ["x"]


def test_a_resume_compares_an_ensembles_teachers_one_by_one(tmp_path, monkeypatch):
    """Relative and absolute paths of the same teacher folders are the same run; another teacher is not."""
    monkeypatch.chdir(TEACHER_DIR.parent)
    absolute, relative = f"{TEACHER_DIR},{JPEG_TEACHER_DIR}", f"{TEACHER_DIR.name},{JPEG_TEACHER_DIR.name}"

    def signature(teachers: str) -> dict:
        args = parse_args(["--teacher", teachers, "--output_dir", str(tmp_path)])
        return run_signature(*args[:4], objective={})

    assert signature(relative) == signature(absolute)
    assert signature(relative)["teacher"] == [str(TEACHER_DIR), str(JPEG_TEACHER_DIR)]
    swapped = signature(f"{JPEG_TEACHER_DIR.name},{TEACHER_DIR.name}")
    assert signature_differences(signature(absolute), swapped) == [
        f"teacher: {[str(TEACHER_DIR), str(JPEG_TEACHER_DIR)]} -> {[str(JPEG_TEACHER_DIR), str(TEACHER_DIR)]}"
    ]
    assert signature(str(TEACHER_DIR))["teacher"] == str(TEACHER_DIR)  # one teacher: a plain value, as before


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_real_teachers_train_and_resume_exactly_under_a_two_process_launch(tmp_path):
    from tests.recipes.test_multiprocess import launch

    def args(out, **extra):
        argv = [
            "--dataset", str(SUBSET), "--teacher", str(TEACHER_DIR), "--teacher", str(JPEG_TEACHER_DIR),
            "--ensemble_weights", "1,2", "--student", "cifar_resnet8", "--method", "kd,fitnet",
            "--max_train_samples", "64", "--max_eval_samples", "32", "--per_device_train_batch_size", "8",
            "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3", "--output_dir", str(out),
            "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true", "--seed", "0", "--data_seed", "0",
        ]  # fmt: skip
        return argv + [x for k, v in extra.items() for x in (f"--{k}", v)]

    (tmp_path / "full").mkdir()
    (tmp_path / "resumed").mkdir()
    r0, r1 = launch(args(tmp_path / "out"), tmp_path / "full")
    assert r0["global_step"] == r1["global_step"] == 6
    # replicas agree on every weight; the regressors' BN statistics are each process's own until DDP's next
    # broadcast (as with one teacher: the checkpoint holds rank 0's)
    own = [k for k in r0["state"] if k.startswith("objective.") and ".bn.running_" in k]
    assert own and all(r0["state"][k] == r1["state"][k] for k in r0["state"] if k not in own)
    assert r0["teacher_wrapped"] == "TeacherEnsemble"
    assert any(".members.1." in k for k in r0["state"])  # FitNet has a regressor per teacher
    assert r0["metrics"]["eval_teacher1_accuracy"] != r0["metrics"]["eval_teacher2_accuracy"]
    out = tmp_path / "out"
    for name in list(out.iterdir()):  # keep the step-3 checkpoint only, then resume from it
        if name.name != "checkpoint-3":
            if name.is_dir():
                import shutil

                shutil.rmtree(name)
            else:
                name.unlink()
    s0, _ = launch(args(out, resume_from_checkpoint=str(out / "checkpoint-3")), tmp_path / "resumed")
    assert s0["global_step"] == 6
    assert s0["state"] == r0["state"]  # bit-identical weights, buffers and FitNet regressors
