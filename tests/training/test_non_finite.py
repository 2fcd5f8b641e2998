"""A diverging run stops with one line naming the step and the loss, keeps its last good checkpoint and writes
nothing non-finite (no weights, no card)."""

import math

import pytest
import safetensors.torch
import torch

from hf_distill import DistillationTrainer, NonFiniteLossError
from hf_distill.data.datasets import prepare_split
from tests.helpers import CIFAR_SPEC, timm_model, trainer_args
from tests.recipes.test_distill_recipe import _fails, recipe  # noqa: F401  (recipe is a fixture)


def _finite_file(path) -> bool:
    return all(
        bool(torch.isfinite(v).all())
        for v in safetensors.torch.load_file(str(path)).values()
        if v.is_floating_point()
    )


def test_learning_rate_1e6_stops_with_one_line_and_saves_nothing_non_finite(recipe, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    argv = (
        "--max_train_samples 64 --num_train_epochs 2 --per_device_train_batch_size 16 --eval_split= "
        "--eval_strategy no --save_strategy steps --save_steps 1 --logging_steps 1 --learning_rate 1e6 "
        "--disable_tqdm true"
    ).split() + ["--output_dir", str(out)]
    line = _fails(recipe, capsys, argv)  # exit status 2, one line, no traceback
    assert "stopped at step" in line and "loss" in line, line
    # no final weights, card or results; every checkpoint left is finite, and there is one
    names = sorted(p.name for p in out.iterdir())
    assert not {"model.safetensors", "README.md", "distill_results.json"} & set(names), names
    checkpoints = [out / n for n in names if n.startswith("checkpoint-")]
    assert checkpoints and not any(n.startswith("tmp-") for n in names)
    assert all(_finite_file(c / "model.safetensors") for c in checkpoints)


@pytest.fixture(scope="module")
def tiny(subset_train):
    return prepare_split(subset_train, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=32)


def _trainer(tmp_path, tiny, **kw):
    return DistillationTrainer(
        model=timm_model(seed=0),
        teacher=timm_model(seed=1),
        objective="kd",
        args=trainer_args(tmp_path / "out", **kw),
        train_dataset=tiny.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
    )


def test_a_nan_loss_term_names_the_term_and_the_step(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, max_steps=3)
    kd = t.model.objective.methods["kd"]
    forward, calls = kd.forward, []

    def nan_at_second_step(s, te, step):
        calls.append(1)
        terms = forward(s, te, step)
        return {k: v * math.nan for k, v in terms.items()} if len(calls) == 2 else terms

    kd.forward = nan_at_second_step
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 2: the loss is not finite \(loss_kd=nan"):
        t.train()


def test_a_non_finite_gradient_stops_before_the_optimizer_step(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, max_steps=2)
    w = next(p for p in t.model.student.parameters() if p.requires_grad)
    before = w.detach().clone()
    w.register_hook(lambda g: g * math.inf)
    with pytest.raises(NonFiniteLossError, match="step 1: the gradient norm is not finite"):
        t.train()
    assert torch.equal(w.detach(), before)  # the step was not taken


def test_non_finite_weights_are_never_saved(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, max_steps=1)
    t.train()
    buf = next(b for n, b in t.model.student.named_buffers() if n.endswith("running_var"))
    buf[0] = math.inf
    with pytest.raises(NonFiniteLossError, match=r"Not saving at step 1: 1 weight\(s\) or buffer\(s\)"):
        t.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()
