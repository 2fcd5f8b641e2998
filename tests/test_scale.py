"""Scale: multi-process equivalence, gradient accumulation, mixed precision, channels_last, torch.compile."""

import copy
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from transformers import TrainingArguments

from hf_distill import DistillationTrainer
from hf_distill.data import collate, prepare_split
from hf_distill.losses import METHODS, DataInfo, DistillationObjective, StepInfo
from hf_distill.models.loading import load_model
from hf_distill.models.taps import feature_tap
from hf_distill.mutual import attach_peers
from hf_distill.trainer import build_distillation_model
from tests.conftest import REPO, SUBSET, TEACHER_DIR
from tests.helpers import CIFAR_SPEC, timm_model
from tests.test_multiprocess import launch

# A student without batch-coupled layers (LayerNorm ViT): with BatchNorm, every process normalizes with the
# statistics of its own shard, so a split batch legitimately trains a different network (SyncBatchNorm needs CUDA).
BN_FREE = "test_vit"


def _run_args(tmp_path, method, batch, extra=()):
    return [
        "--dataset", str(SUBSET), "--teacher", str(TEACHER_DIR), "--student", BN_FREE, "--method", method,
        "--max_train_samples", "48", "--max_eval_samples", "16", "--per_device_train_batch_size", str(batch),
        "--max_steps", "3", "--learning_rate", "0.05", "--optim", "sgd", "--optim_args", "momentum=0.9",
        "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
        "--save_strategy", "no", "--seed", "0",
    ] + list(extra)  # fmt: skip


def _single_process(tmp_path, args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "ddp_run.py"), str(tmp_path)] + args,
        capture_output=True, text=True, timeout=600, cwd=str(REPO), env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return safetensors.torch.load_file(str(tmp_path / "final_state.safetensors"))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("method, extra", [("kd", []), ("crd", ["--crd-nce-k", "32"])])
def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path, method, extra):
    (tmp_path / "two").mkdir()
    launch(_run_args(tmp_path / "two", method, 8, extra), tmp_path / "two")
    two = safetensors.torch.load_file(str(tmp_path / "two" / "final_state.safetensors"))
    one = _single_process(tmp_path / "one", _run_args(tmp_path / "one", method, 16, extra))
    assert one.keys() == two.keys()
    if method == "crd":
        assert any("memory_s" in k for k in one)  # the bank is compared too
    # Same samples, same augmentation (seeded by row), same negatives (drawn for the global batch): the only
    # difference is floating-point summation order (gradient all-reduce, batched matmuls over 8 vs 16 rows),
    # ~1e-7 relative per operation; three SGD steps keep it far below 1e-5.
    for k in one:
        torch.testing.assert_close(two[k].float(), one[k].float(), rtol=1e-4, atol=1e-5, msg=k)


def _tiny_trainer(tmp_path, student, method="kd", **kw):
    tr = prepare_split(
        __import__("datasets").load_dataset(str(SUBSET), split="train"), CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True,
        max_samples=32,
    )  # fmt: skip
    base = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=2, learning_rate=0.05, optim="sgd",
        report_to="none", save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    base.update(kw.pop("args", {}))
    return DistillationTrainer(
        model=student, teacher=timm_model(seed=100), objective=method, args=TrainingArguments(**base),
        train_dataset=tr.dataset, student_input=CIFAR_SPEC, teacher_input=CIFAR_SPEC, **kw,
    )  # fmt: skip


def _vit(seed=0):
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    torch.manual_seed(seed)
    return TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture=BN_FREE, num_labels=10, model_args={"img_size": 32})
    )


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big = _tiny_trainer(tmp_path / "a", _vit())
    big.train()
    acc = _tiny_trainer(
        tmp_path / "b", _vit(), args=dict(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    )
    acc.train()
    for (k, a), b in zip(big.model.state_dict().items(), acc.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=k)


def test_channels_last_gives_the_same_training(tmp_path):
    ref = _tiny_trainer(tmp_path / "a", timm_model(seed=0))
    ref.train()
    cl = _tiny_trainer(tmp_path / "b", timm_model(seed=0), channels_last=True)
    cl.train()
    assert cl.model.student.timm_model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    for (k, a), b in zip(ref.model.state_dict().items(), cl.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=k)


def test_teacher_precision_runs_the_teacher_alone_in_half_precision(tmp_path):
    ref = _tiny_trainer(tmp_path / "a", timm_model(seed=0))
    half = _tiny_trainer(tmp_path / "b", timm_model(seed=0), teacher_precision="bf16")
    x = torch.randn(4, 3, 32, 32)
    f, f32 = half.teacher_features(x), ref.teacher_features(x)
    assert f.logits.dtype == torch.bfloat16 and f32.logits.dtype == torch.float32
    torch.testing.assert_close(f.logits.float(), f32.logits, rtol=0.05, atol=0.05)
    ref.train()
    half.train()
    # the student itself stays in float32; the two runs differ by the teacher's rounding only
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    for (k, a), b in zip(ref.model.state_dict().items(), half.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0.05, atol=1e-3, msg=k)
    with pytest.raises(ValueError, match="Unknown --teacher_precision 'fp8': use one of same, bf16, fp16"):
        _tiny_trainer(tmp_path / "c", timm_model(seed=0), teacher_precision="fp8")


@pytest.mark.slow
def test_torch_compile_gives_the_same_training(tmp_path):
    ref = _tiny_trainer(tmp_path / "a", timm_model(seed=0))
    ref.train()
    comp = _tiny_trainer(
        tmp_path / "b", timm_model(seed=0), args=dict(torch_compile=True, torch_compile_backend="aot_eager")
    )
    comp.train()
    assert type(comp.model_wrapped).__name__ == "OptimizedModule"
    for (k, a), b in zip(ref.model.state_dict().items(), comp.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=k)


# -- mixed precision --------------------------------------------------------------------------------------------
SMALL_KW = {"crd": {"nce_k": 16}, "ab": {"main_stage_loss": True}, "fsp": {"main_stage_loss": True}}


@pytest.fixture(scope="module")
def zoo_batch():
    teacher = load_model("cifar_resnet20", num_labels=10).eval()
    student = load_model("cifar_resnet8", num_labels=10)
    ds = __import__("datasets").load_dataset(str(SUBSET), split="train")
    split = prepare_split(ds, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=64)
    return teacher, student, split, collate([split.dataset[i] for i in range(16)])


def _loss(container, teacher, t_req, batch, step, bf16):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), ctx:
        tf = feature_tap(teacher)(teacher, batch["pixel_values"], t_req)
        out = container(batch["pixel_values"], batch["labels"], batch["index"], tf, step)
    return out["loss"], out["loss_terms"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_losses_agree_with_float32(method, zoo_batch, tmp_path):
    """Networks in bf16 autocast, loss math in float32: the loss stays within 5% (bf16 keeps ~3 significant
    digits of every activation; the terms are sums of many of them, so their relative error is far smaller)."""
    teacher, student, split, batch = zoo_batch
    obj = DistillationObjective.from_names(method, method_kwargs={method: SMALL_KW.get(method, {})})
    if method == "dml":  # mutual learning trains a peer beside the student: give it one, as the recipe does
        attach_peers(obj, [copy.deepcopy(student)], student)
    # the trainer's own construction step builds the lazy parts
    built = build_distillation_model(
        student, teacher, obj, split.dataset, data_info=DataInfo(len(split.dataset), 10, split.labels)
    )
    container = built.container.eval()  # eval: BN statistics and banks stay put
    step = StepInfo(labels=batch["labels"], index=batch["index"], epoch=30.0)
    full, terms32 = _loss(container, teacher, built.teacher_request, batch, step, bf16=False)
    half, terms16 = _loss(container, teacher, built.teacher_request, batch, step, bf16=True)
    assert full.dtype == half.dtype == torch.float32  # the loss math ran in float32
    assert torch.isfinite(half)
    torch.testing.assert_close(half, full, rtol=0.05, atol=1e-4)
    for k, v in terms32.items():
        torch.testing.assert_close(terms16[k], v, rtol=0.05, atol=1e-4, msg=k)
    for name, buf in container.objective.named_buffers():
        if buf.is_floating_point():
            assert buf.dtype == torch.float32, name  # memory banks and running statistics stay float32


def test_bf16_training_runs_on_cpu(tmp_path):
    t = _tiny_trainer(
        tmp_path, load_model("cifar_resnet8", num_labels=10), args=dict(bf16=True, logging_steps=1)
    )
    t.train()
    assert t.accelerator.mixed_precision == "bf16"
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # master weights stay float32
    losses = [h["loss"] for h in t.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
