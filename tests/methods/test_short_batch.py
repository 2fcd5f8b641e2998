"""The last, short batch of an epoch: a method that needs more rows than it gets is skipped by the objective (weight
0, counted, logged once), for every registered method with a ``min_batch_size``, wrapped bases and ``gather=True``
included; a term that is still not finite on a short batch is blamed on the batch, not on the learning rate."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from hf_distill.methods import METHODS, DataInfo, DistillationObjective, Features, StepInfo
from hf_distill.methods.base import DistillationMethod, FeatureNeeds, MethodNeeds
from hf_distill.methods.objective import batch_minimums
from hf_distill.methods.registry import instantiate
from hf_distill.training.non_finite import NonFiniteLossError
from tests.methods._common import (
    built,
    distill_trainer,
    random_features,
    run_world,
    train_split,
    zoo_model,
    zoo_spec,
)

_DATA = DataInfo(num_samples=64, num_classes=10, labels=torch.arange(64) % 10)

#: every method with a minimum (read from the registry), the one whose minimum depends on a hyperparameter, and
#: wrappers around methods with a minimum (the wrapper declares none itself)
SHORT_BATCH_CASES = [(n, {}) for n in sorted(METHODS) if METHODS[n].min_batch_size > 1] + [
    ("crd", {"negatives": "batch"}),
    ("skd", {"base": "cskd"}),
    ("iekd", {"base": "rkd"}),
]


def _objective(name: str, kwargs: dict) -> DistillationObjective:
    s_spec, t_spec = zoo_spec("resnet20"), zoo_spec("resnet56")
    method = built(instantiate(name, kwargs), s_spec, t_spec, _DATA).train()
    return DistillationObjective({name: method}, {name: 1.0}, ce_weight=1.0)


def _batch(rows: int, seed: int = 0) -> tuple[Features, Features, StepInfo]:
    s = random_features(zoo_spec("resnet20"), rows, seed=seed)
    s = Features(
        logits=s.logits.requires_grad_(True),
        embedding=s.embedding.requires_grad_(True),
        maps={k: v.requires_grad_(True) for k, v in s.maps.items()},
    )
    t = random_features(zoo_spec("resnet56"), rows, seed=seed + 1)
    return s, t, StepInfo(labels=torch.arange(rows) % 10, index=torch.arange(rows))


def _need(obj: DistillationObjective, name: str) -> int:
    return max(m.min_batch_size for m in batch_minimums(obj.methods[name]))


@pytest.mark.parametrize("name, kwargs", SHORT_BATCH_CASES, ids=lambda x: str(x or ""))
def test_a_method_is_skipped_on_a_batch_of_one_row(name, kwargs, caplog):
    obj = _objective(name, kwargs)
    obj.check_batch_size(16)  # the configured batch is fine: only the epoch's last batch is short
    need = _need(obj, name)
    assert need > 1
    with caplog.at_level(logging.WARNING, logger="hf_distill.methods.objective"):
        for _ in range(2):  # two epochs' short ends
            s, t, step = _batch(1)
            total, terms = obj(s, t, step)
            assert torch.isfinite(total) and set(terms) == {"ce"}  # CE alone: the method's terms weigh 0
            total.backward()
            assert torch.isfinite(s.logits.grad).all()
    assert obj.short_batch_skips == {name: 2}
    warned = [r.getMessage() for r in caplog.records if "needs at least" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(name) and f"at least {need}" in warned[0]
    # at its minimum the method is computed again, and finite
    s, t, step = _batch(need)
    total, terms = obj(s, t, step)
    assert set(terms) > {"ce"} and all(torch.isfinite(v) for v in terms.values())
    assert obj.short_batch_skips == {name: 2}


def _gathered_step(rank: int, world: int, name: str, rows: list[int]) -> dict:
    """One objective step of ``name`` (gather=True) with ``rows[rank]`` rows on this process."""
    torch.manual_seed(0)
    obj = _objective(name, {"gather": True})
    s, t, step = _batch(rows[rank], seed=rank)
    total, terms = obj(s, t, step)
    total.backward()
    return {
        "terms": sorted(terms),
        "finite": bool(torch.isfinite(total)) and bool(torch.isfinite(s.logits.grad).all()),
        "skips": dict(obj.short_batch_skips),
    }


@pytest.mark.multiprocess
def test_with_gather_the_global_batch_decides_on_every_process_alike():
    # sp needs 2 rows: 1 + 1 over two processes is enough; rkd needs 3: skipped everywhere (no process left waiting
    # in a collective the other skipped), and computed once the global batch has 2 + 1
    for name, rows, skipped in (("sp", [1, 1], False), ("rkd", [1, 1], True), ("rkd", [2, 1], False)):
        results = run_world(_gathered_step, name, rows)
        for r in results:
            assert r["finite"]
            assert r["skips"] == ({name: 1} if skipped else {})
            assert (r["terms"] == ["ce"]) == skipped, (name, rows, r)


class _NanOnOneRow(DistillationMethod):
    """Test-only: declares no minimum, yet its term is NaN on one row (a method whose min_batch_size is wrong)."""

    name = "nan_on_one_row"

    def needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(logits=True), teacher=FeatureNeeds(logits=True))

    def forward(self, student, teacher, step):
        return {"nan_on_one_row": student.logits.std(0).mean()}  # the std of one sample is NaN


def test_a_term_not_finite_on_a_short_batch_names_the_batch_not_the_learning_rate():
    obj = DistillationObjective({"nan_on_one_row": _NanOnOneRow()}, {"nan_on_one_row": 1.0})
    obj.check_batch_size(16)
    s, t, step = _batch(2)
    assert torch.isfinite(obj(s, t, step)[0])
    s, t, step = _batch(1)
    with pytest.raises(NonFiniteLossError) as err:
        obj(s, t, replace(step, global_step=4))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(
        "Training stopped at step 5: nan_on_one_row's loss is not finite"
    )
    assert "short last batch" in msg and "1 row(s) where the others have 16" in msg
    assert "--dataloader_drop_last" in msg and "learning rate is not the cause" in msg


@pytest.mark.slow
def test_rkd_trains_through_an_epoch_whose_last_batch_has_one_row(tmp_path, subset_train):
    """The issue's run: 65 rows in batches of 16 leave a last batch of one row, where RKD's normalized distances
    are 0 / 0; the run used to stop there with a NaN loss and advice to lower the learning rate."""
    from tests.helpers import trainer_args

    split = train_split(subset_train, 65)
    trainer = distill_trainer(
        trainer_args(tmp_path / "out", max_steps=None, num_train_epochs=1, logging_steps=5),
        DistillationObjective.from_names("rkd"),
        split.dataset,
        zoo_model("resnet8"),
        zoo_model("resnet20", seed=1),
        report_teacher_accuracy=False,
    )
    trainer.train()
    assert trainer.state.global_step == 5
    assert trainer.model.objective.short_batch_skips == {"rkd": 1}
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    assert all(torch.isfinite(p).all() for p in trainer.model.student.parameters())
