"""CRD under several processes (real 2-process gloo runs on CPU)."""

import pytest
import torch

from hf_distill.methods import DataInfo, Features, FeatureSpec, StepInfo
from hf_distill.methods.crd import CRD, _global_mean
from hf_distill.methods.crd_memory import momentum_update_
from tests.methods._common import check_gather_matches_full_batch, run_world

N, S_DIM, T_DIM = 40, 6, 5
LABELS = torch.arange(N) % 4
# per step, the rows of rank 0 and rank 1: different sizes; the last step holds row 9 on both ranks (a padded
# distributed sampler does that), which must resolve the same way everywhere
BATCHES = [
    ([0, 5, 7], [12, 30]),
    ([1, 2, 33], [8, 21]),
    ([9, 17, 26], [3, 9]),
]


def _method() -> CRD:
    torch.manual_seed(0)  # the bank's initialization: the same on every process, as the trainer seeds alike
    m = CRD(feat_dim=8, nce_k=6)
    m.build(FeatureSpec((), embedding=(S_DIM,)), FeatureSpec((), embedding=(T_DIM,)), DataInfo(N, 4, LABELS))
    return m


def _features(step: int, rank: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(rows, S_DIM, generator=g), torch.randn(rows, T_DIM, generator=g)


def _bank_worker(rank: int, world: int) -> dict:
    torch.manual_seed(1000 + rank)  # different negatives per process: the bank must not depend on them
    m = _method()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    updates = []
    for step, rows in enumerate(BATCHES):
        idx = torch.tensor(rows[rank])
        f_s, f_t = _features(step, rank, len(idx))
        with torch.no_grad():  # what the forward writes into the banks
            updates.append((idx, m.embed_s(f_s), m.embed_t(f_t)))
        loss = m(Features(embedding=f_s), Features(embedding=f_t), StepInfo(labels=LABELS[idx], index=idx))[
            "crd"
        ]
        opt.zero_grad()
        loss.backward()
        opt.step()  # the heads are not synchronized here, so the processes' embeddings differ: the banks must not
    x = torch.arange(3.0 + rank * 4) * (rank + 1)
    return {
        "memory_s": m.bank.memory_s,
        "memory_t": m.bank.memory_t,
        "z": torch.stack([m.z_s, m.z_t]),
        "updates": updates,
        "mean": _global_mean(x),
        "x": x,
    }


@pytest.mark.slow
def test_banks_are_identical_across_processes_and_equal_a_single_process_update():
    r0, r1 = run_world(_bank_worker)
    assert torch.equal(r0["memory_s"], r1["memory_s"]) and torch.equal(r0["memory_t"], r1["memory_t"])
    assert torch.equal(r0["z"], r1["z"]) and (r0["z"] > 0).all()
    # one process applying the same updates on the concatenated batch (rank order)
    ref = _method()
    for (i0, s0, t0), (i1, s1, t1) in zip(r0["updates"], r1["updates"]):
        idx = torch.cat([i0, i1])
        momentum_update_(ref.bank.memory_s, idx, torch.cat([s0, s1]), 0.5)
        momentum_update_(ref.bank.memory_t, idx, torch.cat([t0, t1]), 0.5)
    assert torch.equal(ref.bank.memory_s, r0["memory_s"]) and torch.equal(ref.bank.memory_t, r0["memory_t"])
    assert not torch.equal(ref.bank.memory_s, _method().bank.memory_s)  # the updates did happen
    # Z comes from the mean over every process's first batch
    full = torch.cat([r0["x"], r1["x"]])
    for r in (r0, r1):
        assert r["mean"].item() == pytest.approx(full.mean().item(), rel=1e-6)


@pytest.mark.slow
def test_batch_negatives_with_gather_equal_the_full_batch():
    s_spec, t_spec = FeatureSpec((), embedding=(12,)), FeatureSpec((), embedding=(10,))
    check_gather_matches_full_batch(CRD, {"negatives": "batch", "feat_dim": 16, "nce_t": 0.5}, s_spec, t_spec)
