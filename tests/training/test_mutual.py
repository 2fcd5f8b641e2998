"""Mutual learning through the trainer: every peer optimized, evaluated, checkpointed and resumed exactly, exported
as its own model with its card, run from the recipe, and a 2-process run equal to a 1-process one."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from huggingface_hub.utils import filter_repo_objects

from hf_distill import DistillationTrainer
from hf_distill.hub.peers import export_peer
from hf_distill.hub.publish import IGNORE_PATTERNS, load_student
from hf_distill.methods import DistillationObjective
from hf_distill.training.mutual import PeerEvaluation, attach_peers, evaluate_peers, mutual_method
from tests.helpers import CIFAR_SPEC, tiny_splits, trainer_args
from tests.methods._common import zoo_model
from tests.training.test_trainer import _StopAt


@pytest.fixture(scope="module")
def tiny(subset_train, subset_test):
    return tiny_splits(subset_train, subset_test)


def _trainer(out, tiny, seed=0, ie=False, **kw):
    tr, te = tiny
    student = zoo_model("resnet8", seed=seed)
    objective = DistillationObjective.from_names("dml", method_kwargs={"dml": {"ie": ie}})
    attach_peers(objective, [zoo_model("resnet8", seed=seed + 1)], student)
    args = dict(per_device_eval_batch_size=32, max_steps=4, optim_args="momentum=0.9", data_seed=0)
    t = DistillationTrainer(
        model=student,
        teacher=None,
        objective=objective,
        args=trainer_args(out, **{**args, **kw}),
        train_dataset=tr.dataset,
        eval_dataset=te.dataset,
        student_input=CIFAR_SPEC,
    )
    t.add_callback(PeerEvaluation(t))
    return t


def _peer(trainer):
    return mutual_method(trainer).peer_nets[0]


def test_every_peer_is_optimized_and_logged(tmp_path, tiny):
    t = _trainer(tmp_path, tiny)
    before = {k: v.clone() for k, v in _peer(t).state_dict().items()}
    t.train()
    opt_ids = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in _peer(t).parameters()} <= opt_ids  # one optimizer for all networks
    assert any(not torch.equal(v, before[k]) for k, v in _peer(t).state_dict().items())
    logs = [h for h in t.state.log_history if "loss" in h]
    assert logs and all(
        {"loss_ce", "loss_dml_kl", "loss_dml_peer1_ce", "loss_dml_peer1_kl"} <= set(h) for h in logs
    )


def test_peer_evaluation_is_the_peers_accuracy(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, max_steps=2)
    t.train()
    metrics = t.evaluate()
    peer = _peer(t).eval()
    _, te = tiny
    x = torch.stack([te.dataset[i]["pixel_values"] for i in range(len(te.dataset))])
    y = torch.tensor([te.dataset[i]["labels"] for i in range(len(te.dataset))])
    with torch.no_grad():
        want = float((peer(x).logits.argmax(1) == y).float().mean())
    assert metrics["eval_peer1_accuracy"] == pytest.approx(want)
    assert t.state.log_history[-1]["eval_peer1_accuracy"] == metrics["eval_peer1_accuracy"]
    assert evaluate_peers(t)["eval_peer1_accuracy"] == pytest.approx(want)


@pytest.mark.parametrize("ie", [False, True], ids=["dml", "dml_ie"])
def test_resume_in_the_middle_of_an_epoch_equals_the_uninterrupted_run(tmp_path, tiny, ie):
    # 64 samples / 16 per batch = 4 steps per epoch: step 2 is in the middle of the first epoch
    kw = dict(max_steps=6, save_strategy="steps", save_steps=2, lr_scheduler_type="linear", ie=ie)
    full = _trainer(tmp_path / "a", tiny, **kw)
    full.train()
    ref = {k: v.detach().clone() for k, v in full.model.state_dict().items()}

    part = _trainer(tmp_path / "b", tiny, **kw)
    part.add_callback(_StopAt(2))
    part.train()
    resumed = _trainer(
        tmp_path / "b", tiny, seed=7, **kw
    )  # other weights: everything comes from the checkpoint
    resumed.train(resume_from_checkpoint=True)
    got = resumed.model.state_dict()
    assert ref.keys() == got.keys() and any(".peer_nets.0." in k for k in got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_a_peer_is_exported_as_its_own_model_with_its_card(tmp_path, tiny):
    t = _trainer(tmp_path / "out", tiny, max_steps=2)
    t.train()
    metrics = t.evaluate()
    t.save_model()
    summary = export_peer(t, 1, str(tmp_path / "peer1"))
    peer = _peer(t).eval()
    loaded = load_student(tmp_path / "peer1").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, peer(x).logits, atol=1e-6)
    assert summary.accuracy == metrics["eval_peer1_accuracy"]
    peer_card = (tmp_path / "peer1" / "README.md").read_text()
    assert "Trained mutually" in peer_card and "student (resnet8" in peer_card
    student_card = (tmp_path / "out" / "README.md").read_text()
    assert "Trained mutually" in student_card and "peer 1 (resnet8" in student_card
    with pytest.raises(ValueError, match="no peer 2 .* 1 peer"):
        export_peer(t, 2, str(tmp_path / "peer2"))
    # the student's folder, pushed, never carries the peers (each is its own model)
    files = ["model.safetensors", "peer1/model.safetensors", "peer12/README.md"]
    assert list(filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS)) == ["model.safetensors"]


def test_the_recipe_runs_mutual_learning_and_exports_the_peers(tmp_path):
    from recipes.distill import main

    out = tmp_path / "run"
    main(
        [
            "--method", "dml_ie", "--student", "cifar_resnet8", "--dml-peers", "cifar_resnet8,cifar_resnet8",
            "--max_train_samples", "32", "--max_eval_samples", "16", "--per_device_train_batch_size", "16",
            "--max_steps", "2", "--output_dir", str(out), "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_accuracy", "eval_peer1_accuracy", "eval_peer2_accuracy"} <= set(results)
    assert results["objective"]["methods"]["dml"]["ie"] is True
    for k in (1, 2):
        card = (out / f"peer{k}" / "README.md").read_text()
        assert "Trained mutually" in card and f"{100 * results[f'eval_peer{k}_accuracy']:.2f}%" in card


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    """A BatchNorm-free pair (ViT student and peer): 2 processes x 8 equal 1 process x 16, peers included."""
    from tests.recipes.test_multiprocess import launch
    from tests.training.test_scale import _run_args, _single_process

    extra = ["--dml-peers", "test_vit"]
    (tmp_path / "two").mkdir()
    launch(_run_args(tmp_path / "two", "dml", 8, extra), tmp_path / "two")
    two = safetensors.torch.load_file(str(tmp_path / "two" / "final_state.safetensors"))
    one = _single_process(tmp_path / "one", _run_args(tmp_path / "one", "dml", 16, extra))
    assert one.keys() == two.keys() and any(".peer_nets.0." in k for k in one)
    for k in one:
        torch.testing.assert_close(two[k].float(), one[k].float(), rtol=1e-4, atol=1e-5, msg=k)
    assert not torch.equal(
        one["student.timm_model.head.weight"], one["objective.methods.dml.peer_nets.0.timm_model.head.weight"]
    )
