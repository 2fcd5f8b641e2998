import math

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

import hf_distill.methods.crd  # noqa: F401  (registers crd and crd_kd)
from hf_distill.methods import (
    DataInfo,
    DistillationObjective,
    Features,
    FeatureSpec,
    StepInfo,
    resolve_objective,
)
from hf_distill.methods.crd import CRD, masked_nce_loss, nce_loss
from hf_distill.methods.crd_memory import exp_scores, momentum_update_, sample_contrast_indices
from hf_distill.models.modeling_cifar import create_cifar_model
from hf_distill.run.config import parse_method_flags
from tests.helpers import CIFAR_SPEC
from tests.methods._common import distill_trainer, train_split, trainer_args

# ---------------------------------------------------------------------------------------------------------------
# independent computations (numpy / python loops, written from the paper's Eq. 18 and RepDistiller's description)


def _nce_by_hand(x, n_data, eps=1e-7):
    """Eq. 18 for a (B, K+1) list of lists: -(1/B) sum_b [log h(pos) + sum_k log(1 - h(neg))]."""
    b, m = len(x), len(x[0]) - 1
    pn = 1.0 / n_data
    total = 0.0
    for row in x:
        total += math.log(row[0] / (row[0] + m * pn + eps))
        for v in row[1:]:
            total += math.log(m * pn / (v + m * pn + eps))
    return -total / b


def _embed_np(f, linear):
    w = linear.weight.detach().double().numpy()
    bias = linear.bias.detach().double().numpy()
    z = f.double().numpy() @ w.T + bias
    return z / np.sqrt((z**2).sum(1, keepdims=True))


def _scores_np(anchor, memory, cidx, t):
    out = np.zeros(cidx.shape)
    for b in range(cidx.shape[0]):
        for k in range(cidx.shape[1]):
            out[b, k] = math.exp(float(memory[cidx[b, k]] @ anchor[b]) / t)
    return out


def _update_np(memory, rows, v, m):
    memory = memory.copy()
    for i, r in enumerate(rows):
        new = m * memory[r] + (1 - m) * v[i]
        memory[r] = new / np.linalg.norm(new)
    return memory


def _spec(d):
    return FeatureSpec(names=(), embedding=(d,))


def _crd(n=12, s_dim=6, t_dim=5, labels=None, seed=0, **kw):
    torch.manual_seed(seed)
    labels = labels if labels is not None else torch.arange(n) % 3
    m = CRD(**kw)
    m.build(
        _spec(s_dim), _spec(t_dim), DataInfo(num_samples=n, num_classes=int(labels.max()) + 1, labels=labels)
    )
    return m


def _step(m, f_s, f_t, idx, labels):
    return m(Features(embedding=f_s), Features(embedding=f_t), StepInfo(labels=labels[idx], index=idx))["crd"]


# ---------------------------------------------------------------------------------------------------------------
# 1. values against independent computations


def test_nce_loss_matches_eq18_by_hand():
    x = [[0.9, 0.01, 0.2, 0.05], [0.3, 0.4, 0.001, 0.02], [2.0, 0.5, 0.5, 0.1]]
    got = nce_loss(torch.tensor(x, dtype=torch.float64), n_data=12)
    assert got.item() == pytest.approx(_nce_by_hand(x, 12), rel=1e-12)
    # the masked (in-batch) form with every candidate a negative is the same loss
    xt = torch.tensor(x, dtype=torch.float64)
    full = masked_nce_loss(xt[:, 0], xt[:, 1:], torch.ones(3, 3, dtype=torch.bool), 12)
    assert full.item() == pytest.approx(got.item(), rel=1e-12)


def test_crd_loss_z_and_bank_update_match_reference_computation():
    """Tiny bank (12 rows, K=5): loss, Z (fixed on the first batch) and the momentum update, step by step."""
    n, k, t, mom = 12, 5, 0.07, 0.5
    labels = torch.arange(n) % 3
    m = _crd(n=n, labels=labels, feat_dim=4, nce_k=k)
    mem_s = m.bank.memory_s.double().numpy().copy()
    mem_t = m.bank.memory_t.double().numpy().copy()
    stdv = 1 / math.sqrt(4 / 3)
    assert np.abs(mem_s).max() <= stdv and np.abs(mem_t).max() <= stdv
    assert m.z_s.item() == -1 and m.z_t.item() == -1
    # negatives fixed by injection: column 0 = the sample, then rows of other classes (one repeated)
    batches = [
        (
            torch.tensor([0, 5, 7]),
            torch.tensor([[0, 1, 2, 4, 5, 5], [5, 0, 1, 3, 4, 7], [7, 0, 2, 3, 8, 11]]),
        ),
        (
            torch.tensor([1, 5, 9]),
            torch.tensor([[1, 0, 2, 3, 5, 6], [5, 1, 3, 4, 7, 9], [9, 1, 2, 4, 5, 10]]),
        ),
    ]
    torch.manual_seed(1)
    z_s = z_t = None
    for step, (idx, cidx) in enumerate(batches):
        assert not (labels[cidx[:, 1:]] == labels[idx][:, None]).any()
        f_s, f_t = torch.randn(3, 6), torch.randn(3, 5)
        m.bank.sample = lambda index, c=cidx: c
        got = _step(m, f_s, f_t, idx, labels)
        v_s, v_t = _embed_np(f_s, m.embed_s.linear), _embed_np(f_t, m.embed_t.linear)
        out_s = _scores_np(v_s, mem_t, cidx.numpy(), t)  # student anchor vs teacher bank
        out_t = _scores_np(v_t, mem_s, cidx.numpy(), t)  # teacher anchor vs student bank
        if step == 0:
            z_s, z_t = out_s.mean() * n, out_t.mean() * n
        assert m.z_s.item() == pytest.approx(z_s, rel=1e-5) and m.z_t.item() == pytest.approx(z_t, rel=1e-5)
        expected = _nce_by_hand((out_s / z_s).tolist(), n) + _nce_by_hand((out_t / z_t).tolist(), n)
        assert got.item() == pytest.approx(expected, rel=1e-5)
        mem_s = _update_np(mem_s, idx.tolist(), v_s, mom)
        mem_t = _update_np(mem_t, idx.tolist(), v_t, mom)
        np.testing.assert_allclose(m.bank.memory_s.numpy(), mem_s, atol=1e-6)
        np.testing.assert_allclose(m.bank.memory_t.numpy(), mem_t, atol=1e-6)
        assert np.allclose(np.linalg.norm(mem_s[idx.numpy()], axis=1), 1)


def test_z_is_fixed_on_first_batch_and_never_changes():
    labels = torch.arange(40) % 4
    m = _crd(n=40, labels=labels, nce_k=8)
    zs = []
    for i in range(4):
        idx = torch.randperm(40)[:6]
        _step(m, torch.randn(6, 6) * (i + 1), torch.randn(6, 5), idx, labels)
        zs.append((m.z_s.item(), m.z_t.item()))
    assert zs[0][0] > 0 and zs[0][1] > 0 and all(z == zs[0] for z in zs)
    assert {"z_s", "z_t", "bank.memory_s", "bank.memory_t"} <= set(m.state_dict())  # checkpointed


def test_momentum_update_rows_and_duplicates():
    torch.manual_seed(0)
    mem = torch.nn.functional.normalize(torch.randn(6, 3), dim=1)
    before = mem.clone()
    v = torch.nn.functional.normalize(torch.randn(3, 3), dim=1)
    momentum_update_(mem, torch.tensor([4, 1, 4]), v, 0.3)
    exp4 = 0.3 * before[4] + 0.7 * v[2]  # the last occurrence of row 4 wins
    exp1 = 0.3 * before[1] + 0.7 * v[1]
    assert torch.allclose(mem[4], exp4 / exp4.norm(), atol=1e-7)
    assert torch.allclose(mem[1], exp1 / exp1.norm(), atol=1e-7)
    untouched = [0, 2, 3, 5]
    assert torch.equal(mem[untouched], before[untouched])


def test_score_paths_agree_and_gradcheck():
    torch.manual_seed(0)
    mem = torch.nn.functional.normalize(torch.randn(30, 8, dtype=torch.float64), dim=1)
    a = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1).requires_grad_()
    cidx = torch.randint(0, 30, (4, 7))
    s_all = exp_scores(a, mem, cidx, 0.5, score_all_rows=True)
    s_rows = exp_scores(a, mem, cidx, 0.5, score_all_rows=False)
    assert torch.allclose(s_all, s_rows, rtol=1e-12)
    for path in (True, False):
        assert torch.autograd.gradcheck(
            lambda x, p=path: nce_loss(exp_scores(x, mem, cidx, 0.5, score_all_rows=p) / 3.0, 30), (a,)
        )


def test_batch_negatives_match_independent_computation():
    torch.manual_seed(0)
    n, t = 50, 0.5
    m = CRD(feat_dim=4, nce_t=t, negatives="batch")
    assert not m.needs().index
    m.build(_spec(6), _spec(5), DataInfo(num_samples=n, num_classes=3))  # no labels needed
    assert not hasattr(m, "bank")
    y = torch.tensor([0, 1, 0, 2, 2])
    f_s, f_t = torch.randn(5, 6), torch.randn(5, 5)
    got = m(Features(embedding=f_s), Features(embedding=f_t), StepInfo(labels=y))["crd"]
    v_s, v_t = _embed_np(f_s, m.embed_s.linear), _embed_np(f_t, m.embed_t.linear)
    expected = 0.0
    for anchor, cand in ((v_s, v_t), (v_t, v_s)):
        sc = np.exp(anchor @ cand.T / t)
        valid = [(b, j) for b in range(5) for j in range(5) if j == b or y[j] != y[b]]
        z = np.mean([sc[b, j] for b, j in valid]) * n
        total = 0.0
        for b in range(5):
            negs = [j for j in range(5) if y[j] != y[b]]
            mp = len(negs) / n
            total += math.log((sc[b, b] / z) / (sc[b, b] / z + mp + 1e-7))
            total += sum(math.log(mp / (sc[b, j] / z + mp + 1e-7)) for j in negs)
        expected += -total / 5
    assert got.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# negatives and positives


def _tables(labels):
    order = torch.argsort(labels, stable=True)
    start = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(labels).cumsum(0)])
    return order, start


@pytest.mark.parametrize("mode", ["exact", "relax"])
@pytest.mark.parametrize("k", [5, 8, 20])  # without replacement, every other-class row once, with replacement
def test_negatives_are_always_of_other_classes(mode, k):
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])  # 4 rows per class, 8 of other classes
    order, start = _tables(labels)
    torch.manual_seed(0)
    for _ in range(20):
        idx = torch.randperm(12)[:5]
        c = sample_contrast_indices(idx, labels, order, start, k, mode)
        assert c.shape == (5, k + 1)
        assert (labels[c[:, 1:]] != labels[idx][:, None]).all()
        assert (labels[c[:, 0]] == labels[idx]).all()  # the positive is always of the same class
        if mode == "exact":
            assert torch.equal(c[:, 0], idx)
        if k <= 8:  # without replacement: distinct rows
            assert all(len(set(r.tolist())) == k for r in c[:, 1:])
        if k == 8:  # K = all other-class rows: each exactly once
            for r, i in zip(c[:, 1:], idx):
                assert sorted(r.tolist()) == [j for j in range(12) if labels[j] != labels[i]]


def test_relax_positive_is_a_random_row_of_the_same_class():
    labels = torch.arange(40) % 4
    m = _crd(n=40, labels=labels, nce_k=6, mode="relax")
    idx = torch.tensor([0, 1, 2, 3, 4])
    torch.manual_seed(3)
    pos = torch.stack([m.bank.sample(idx)[:, 0] for _ in range(50)])
    assert (labels[pos] == labels[idx]).all()
    assert (pos != idx).float().mean() > 0.5  # mostly another row of the class (9 of 10 rows are others)


def test_sampling_follows_torch_rng_and_mixed_class_sizes():
    labels = torch.tensor([0] * 30 + [1] * 3 + [2] * 3)  # class 0 has 6 others (< K), classes 1, 2 have 33
    order, start = _tables(labels)
    idx = torch.tensor([0, 30, 33, 5])
    torch.manual_seed(5)
    a = sample_contrast_indices(idx, labels, order, start, 10)
    torch.manual_seed(5)
    b = sample_contrast_indices(idx, labels, order, start, 10)
    assert torch.equal(a, b)
    assert (labels[a[:, 1:]] != labels[idx][:, None]).all()
    assert len(set(a[1, 1:].tolist())) == 10  # without replacement where possible


def _stacked_draws(idx, labels, order, start, k):
    """The sampler as one pass per step over the whole (B, K) table (before the per-sample loop): randperm prefixes
    stacked, draws with replacement merged, positions mapped over the own class, rows looked up."""
    cls = labels[idx]
    first, count = start[cls], start[cls + 1] - start[cls]
    others = labels.numel() - count
    slots = torch.stack(
        [torch.randperm(m)[:k] if m >= k else torch.zeros(k, dtype=torch.long) for m in others.tolist()]
    )
    if (others < k).any():
        repl = torch.randint(0, 2**62, (len(idx), k)) % others[:, None]
        slots = torch.where((others >= k)[:, None], slots, repl)
    slots = slots + (slots >= first[:, None]) * count[:, None]
    return torch.cat([idx[:, None], order[slots]], dim=1)


@pytest.mark.parametrize("k", [3, 13])  # every class without replacement; class 0 (12 others) with
def test_sampler_draws_what_the_whole_table_computation_draws(k):
    """The per-sample loop is a reorganization: the same RNG calls in the same order, the same rows."""
    labels = torch.tensor([0] * 30 + [1] * 3 + [2] * 5 + [3] * 4)
    order, start = _tables(labels)
    idx = torch.tensor([0, 30, 33, 5, 41, 38, 31])
    torch.manual_seed(7)
    got = sample_contrast_indices(idx, labels, order, start, k)
    torch.manual_seed(7)
    assert torch.equal(got, _stacked_draws(idx, labels, order, start, k))


def test_negatives_without_replacement_are_uniform_over_the_other_class_rows():
    """Every other-class row is drawn with probability K / others (here 5 of 20), as numpy's choice without
    replacement; the own class never. 2,000 draws: each row's count is 500 +- 4 standard deviations."""
    labels = torch.arange(30) % 3  # 10 rows per class: 20 others
    order, start = _tables(labels)
    torch.manual_seed(0)
    idx = torch.zeros(2000, dtype=torch.long)  # class 0, drawn 2,000 times
    c = sample_contrast_indices(idx, labels, order, start, 5)
    assert all(len(set(r.tolist())) == 5 for r in c[:, 1:])
    counts = torch.bincount(c[:, 1:].reshape(-1), minlength=30)
    assert (counts[labels == 0] == 0).all()
    sd = (2000 * 0.25 * 0.75) ** 0.5
    assert ((counts[labels != 0] - 500).abs() < 4 * sd).all(), counts


# ---------------------------------------------------------------------------------------------------------------
# 2. gradients


def test_gradients_reach_student_and_both_heads_only():
    labels = torch.arange(24) % 3
    m = _crd(n=24, labels=labels, nce_k=6)
    f_s = torch.randn(4, 6, requires_grad=True)
    f_t = torch.randn(4, 5, requires_grad=True)  # the trainer passes detached teacher features anyway
    bank_before = m.bank.memory_s.clone()
    loss = _step(m, f_s, f_t, torch.tensor([0, 4, 8, 13]), labels)
    loss.backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    for head in (m.embed_s, m.embed_t):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert not m.bank.memory_s.requires_grad and m.bank.memory_s.grad is None
    assert not torch.equal(bank_before, m.bank.memory_s)  # updated without gradient
    params = {n for n, _ in m.named_parameters()}
    assert params == {
        "embed_s.linear.weight",
        "embed_s.linear.bias",
        "embed_t.linear.weight",
        "embed_t.linear.bias",
    }


def test_eval_mode_leaves_bank_unchanged():
    labels = torch.arange(24) % 3
    m = _crd(n=24, labels=labels, nce_k=6).eval()
    before = m.bank.memory_t.clone()
    _step(m, torch.randn(4, 6), torch.randn(4, 5), torch.tensor([0, 4, 8, 13]), labels)
    assert torch.equal(before, m.bank.memory_t)


# ---------------------------------------------------------------------------------------------------------------
# 3. shapes from the real zoo models


@pytest.mark.parametrize("teacher,student", [("resnet32x4", "shufflenetv2"), ("vgg13", "mobilenetv2")])
def test_mixed_embedding_sizes_from_zoo_models(teacher, student):
    x = torch.randn(3, 3, 32, 32)
    feats = {}
    for name in (teacher, student):
        net = create_cifar_model(name, num_labels=10).eval()
        with torch.no_grad():
            feats[name] = net.forward_taps(x)[1]
    dims = {k: v.shape[1] for k, v in feats.items()}
    assert dims == {"resnet32x4": 256, "shufflenetv2": 1024} or dims == {"vgg13": 512, "mobilenetv2": 1280}
    labels = torch.arange(30) % 10
    m = CRD(nce_k=16)
    m.build(_spec(dims[student]), _spec(dims[teacher]), DataInfo(30, 10, labels))
    assert m.embed_s.linear.in_features == dims[student] and m.embed_t.linear.in_features == dims[teacher]
    assert m.bank.memory_s.shape == m.bank.memory_t.shape == (30, 128)
    idx = torch.tensor([1, 12, 25])
    loss = m(
        Features(embedding=feats[student]), Features(embedding=feats[teacher]), StepInfo(labels[idx], idx)
    )
    assert torch.isfinite(loss["crd"])


# ---------------------------------------------------------------------------------------------------------------
# errors, registry, CLI


def test_clear_errors():
    labels = torch.arange(12) % 3
    m = _crd(n=12, labels=labels, nce_k=4)
    f_s, f_t = torch.randn(2, 6), torch.randn(2, 5)
    with pytest.raises(ValueError, match="memory bank has 12 rows but the batch has row index 12"):
        _step(m, f_s, f_t, torch.tensor([3, 12]), torch.arange(13) % 3)
    with pytest.raises(ValueError, match=r"StepInfo.index"):
        m(Features(embedding=f_s), Features(embedding=f_t), StepInfo(labels=torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="label 2 in the batch but label 1"):
        m(
            Features(embedding=f_s),
            Features(embedding=f_t),
            StepInfo(torch.tensor([0, 2]), torch.tensor([0, 1])),
        )
    with pytest.raises(ValueError, match=r"DataInfo.labels"):
        CRD().build(_spec(6), _spec(5), DataInfo(num_samples=12, num_classes=3))
    with pytest.raises(ValueError, match="same class"):
        CRD().build(_spec(6), _spec(5), DataInfo(12, 1, torch.zeros(12, dtype=torch.long)))
    for bad in ({"nce_k": 0}, {"nce_t": 0}, {"nce_m": 1.0}, {"mode": "loose"}, {"negatives": "queue"}):
        with pytest.raises(ValueError, match="crd"):
            CRD(**bad)


def test_registry_defaults_preset_and_flags():
    spec = resolve_objective("crd")
    assert spec.methods == ("crd",) and spec.weights == (0.8,) and spec.ce_weight == 1.0
    spec = resolve_objective("crd_kd")
    assert spec.methods == ("crd", "kd") and spec.weights == (0.8, 1.0) and spec.ce_weight == 1.0
    assert CRD.hyperparameters() == {
        "feat_dim": 128,
        "nce_k": 16384,
        "nce_t": 0.07,
        "nce_m": 0.5,
        "mode": "exact",
        "negatives": "bank",
        "gather": False,
    }
    assert parse_method_flags(["--crd-nce-k", "4096", "--crd-negatives", "batch"], ["crd", "kd"]) == {
        "crd": {"nce_k": 4096, "negatives": "batch"}
    }
    obj = DistillationObjective.from_names("crd_kd", method_kwargs={"crd": {"nce_k": 64}})
    assert obj.methods["crd"].nce_k == 64 and obj.needs().index


# ---------------------------------------------------------------------------------------------------------------
# 4. real data: a few steps decrease the loss; trainer resume is exact


def _real_batch(subset_train, n_rows=None, bsz=16):
    from hf_distill.data.datasets import collate, prepare_split

    split = prepare_split(subset_train, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, train=False, max_samples=n_rows)
    return split, collate([split.dataset[i] for i in range(bsz)])


@pytest.mark.slow
def test_training_steps_on_real_batch_decrease_loss(subset_train):
    # the bank holds the whole 5000-row subset, so the batch is a small part of the set as in real training (a
    # bank of only the batch's rows drags every row of an untrained student towards one direction)
    split, batch = _real_batch(subset_train)
    torch.manual_seed(0)
    student = create_cifar_model("resnet8", num_labels=10)
    teacher = create_cifar_model("resnet20", num_labels=10).eval()
    with torch.no_grad():
        f_t = teacher.forward_taps(batch["pixel_values"])[1]
    m = CRD(nce_k=64)
    m.build(_spec(64), _spec(64), DataInfo(len(split.dataset), 10, split.labels))
    opt = torch.optim.SGD(list(student.parameters()) + list(m.parameters()), lr=0.05, momentum=0.9)
    step = StepInfo(labels=batch["labels"], index=batch["index"])
    losses = []
    for _ in range(8):
        f_s = student.forward_taps(batch["pixel_values"])[1]
        loss = m(Features(embedding=f_s), Features(embedding=f_t), step)["crd"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_training_stop = True


def _trainer(out, split, seed=0, **kw):
    torch.manual_seed(seed)
    student = create_cifar_model("resnet8", num_labels=10)
    torch.manual_seed(100)
    teacher = create_cifar_model("resnet14", num_labels=10)
    args = trainer_args(
        out,
        max_steps=8,
        optim_args="momentum=0.9",
        save_strategy="steps",
        save_steps=4,
        lr_scheduler_type="linear",
        data_seed=0,
    )
    obj = DistillationObjective.from_names("crd", method_kwargs={"crd": {"nce_k": 32}})
    return distill_trainer(args, obj, split.dataset, student, teacher, **kw)


@pytest.mark.slow
def test_trainer_resume_equals_uninterrupted_run(tmp_path, subset_train):
    split = train_split(subset_train, 64)
    full = _trainer(tmp_path / "a", split)
    full.train()
    ref = {k: v.detach().clone() for k, v in full.model.state_dict().items()}
    assert any(h.get("loss_crd") for h in full.state.log_history)

    part = _trainer(tmp_path / "b", split)
    part.add_callback(_StopAt(4))
    part.train()
    assert part.state.global_step == 4
    resumed = _trainer(tmp_path / "b", split, seed=7)  # other init: everything must come from the checkpoint
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    got = {k: v.detach().clone() for k, v in resumed.model.state_dict().items()}
    assert ref.keys() == got.keys()
    crd_keys = [k for k in got if ".crd." in k]
    for name in (
        "embed_s.linear.weight",
        "embed_t.linear.weight",
        "bank.memory_s",
        "bank.memory_t",
        "z_s",
        "z_t",
    ):
        assert any(k.endswith("crd." + name) for k in crd_keys), name
    z = [k for k in crd_keys if k.endswith("z_s")][0]
    assert got[z] > 0
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-6, rtol=0), k
