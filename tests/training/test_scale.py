"""Scale: multi-process equivalence, gradient accumulation, mixed precision, channels_last, torch.compile."""

import copy
import math
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from transformers import TrainingArguments

from hf_distill import DistillationTrainer
from hf_distill.data.datasets import collate, prepare_split
from hf_distill.methods import METHODS, DataInfo, DistillationObjective, StepInfo
from hf_distill.models.loading import load_model
from hf_distill.models.taps import feature_tap
from hf_distill.training.mutual import attach_peers
from hf_distill.training.trainer import build_distillation_model
from tests.conftest import REPO, SUBSET, TEACHER_DIR
from tests.helpers import CIFAR_SPEC, smooth_model, timm_model
from tests.recipes.test_multiprocess import launch

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


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big = _tiny_trainer(tmp_path / "a", smooth_model())
    big.train()
    acc = _tiny_trainer(
        tmp_path / "b",
        smooth_model(),
        args=dict(per_device_train_batch_size=8, gradient_accumulation_steps=2),
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

# What bf16 autocast can change, from its arithmetic. bf16 keeps 8 significant bits: one rounding moves a value by
# at most u = 2^-9 relative. Each layer of a network rounds its output once; independent roundings add up in
# quadrature, so a feature after L layers is off by about sqrt(L) u (BatchNorm renormalizes, so errors do not
# compound multiplicatively). The deeper network here is the resnet56 teacher: EPS = sqrt(56) u = 1.5% (measured on
# an AVX2 CPU: 0.3% to 1.3% for every feature of both networks; the test checks the features stay within 2 EPS,
# so a CPU whose bf16 path rounds more, e.g. partial sums, is named as such instead of failing a loss term).
# The loss math runs in float32 (checked: the loss is float32): its own rounding (~1e-7) is negligible. A term
# therefore moves by kappa EPS, kappa being its relative sensitivity to a relative change of its inputs: at most ~4
# for the means, norms, KL divergences, cosines and normalized distances of these methods -> rtol 4 EPS = 6%.
# Terms outside that rule, each with its own bound:
# * CRD sums nce_k + 1 log-scores, each a dot of unit embeddings divided by nce_t = 0.07: a dot moves by ~EPS, each
#   score by EPS / nce_t, the loss by up to (nce_k + 1) EPS / nce_t in absolute terms;
# * a term that is 0 in float32 (DML's peer starts as the student's copy: their KL is 0) is a divergence between two
#   roundings of one distribution, second order in the rounding: atol EPS^2.
# CSKD's CSWT maps each sample's similarity linearly from [s_min, s_max] of the batch: well conditioned only when
# that spread is far above EPS, which holds for a trained teacher (the converted CIFAR-10 resnet56: spread ~0.5) and
# not for two random networks (all predictions near uniform, every similarity ~1: a spread of the rounding's size).
BF16_EPS = math.sqrt(56) * 2**-9
BF16_RTOL = 4 * BF16_EPS


def _bf16_atol(method: str) -> float:
    if method == "crd":
        crd = METHODS["crd"](**SMALL_KW["crd"])
        return (crd.nce_k + 1) * BF16_EPS / crd.nce_t
    return BF16_EPS**2


@pytest.fixture(scope="module")
def zoo_batch():
    teacher = load_model(str(TEACHER_DIR)).eval()  # trained: confident, varied predictions (see above)
    torch.manual_seed(0)
    student = load_model("cifar_resnet8", num_labels=10)
    ds = __import__("datasets").load_dataset(str(SUBSET), split="train")
    split = prepare_split(ds, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=64)
    return teacher, student, split, collate([split.dataset[i] for i in range(16)])


def _loss(container, teacher, t_req, batch, step, bf16):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), ctx:
        tf = feature_tap(teacher)(teacher, batch["pixel_values"], t_req)
        out = container(batch["pixel_values"], batch["labels"], batch["index"], tf, step)
    return out["loss"], out["loss_terms"], tf


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_losses_agree_with_float32(method, zoo_batch, tmp_path):
    """Networks in bf16 autocast, loss math in float32: every loss term stays within what bf16's rounding of the
    networks' features can change (the bounds and their reasons are above this test)."""
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
    full, terms32, tf32 = _loss(container, teacher, built.teacher_request, batch, step, bf16=False)
    half, terms16, tf16 = _loss(container, teacher, built.teacher_request, batch, step, bf16=True)
    feats = {"logits": (tf16.logits, tf32.logits), "embedding": (tf16.embedding, tf32.embedding)}
    feats.update({f"map {k}": (tf16.maps[k], v) for k, v in tf32.maps.items()})
    for k, (a, b) in feats.items():
        if b is not None:
            err = _relative_error(a, b)
            assert err <= 2 * BF16_EPS, f"the teacher's bf16 {k} is off by {err:.2%}: more than bf16 rounding"
    assert full.dtype == half.dtype == torch.float32  # the loss math ran in float32
    assert torch.isfinite(half)
    for k, v in terms32.items():
        torch.testing.assert_close(terms16[k], v, rtol=BF16_RTOL, atol=_bf16_atol(method), msg=k)
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
