"""The teacher cache's top-k mode (``TeacherCache(topk=k)``, ``--teacher_cache_topk K``): what it stores, what the
methods receive, and that it never serves or is served by the exact cache."""

import importlib.util
import inspect
import math
import os

import pytest
import torch

from hf_distill import DistillationTrainer
from hf_distill.data.datasets import prepare_split
from hf_distill.features import FeatureNeeds
from hf_distill.methods import Features
from hf_distill.training.teacher_cache import TeacherCache
from hf_distill.training.teacher_cache_shards import (
    CLASSES_META,
    SHARD_SUFFIX,
    TOPK_META,
    read_shard,
    signing_key,
    write_shard,
)
from hf_distill.training.teacher_cache_topk import topk_compress, topk_reconstruct, topk_refusal
from tests.conftest import REPO
from tests.helpers import CIFAR_SPEC, CacheRows, timm_model, trainer_args


def _batch(n: int = 8, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 4, 4, generator=g), torch.arange(n), torch.randn(n, classes, generator=g) * 3


def _stands_for(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The distribution a top-k row stands for, from the definition (float64, sorting, no topk/logsumexp): the
    teacher's k largest probabilities kept, the rest of the mass spread uniformly over the other classes."""
    p = logits.double().softmax(-1)
    order = p.argsort(-1, descending=True)
    out = torch.empty_like(p)
    for r in range(len(p)):
        top = order[r, :k]
        rest = (1 - p[r, top].sum()) / (p.shape[-1] - k)
        out[r] = rest
        out[r, top] = p[r, top]
    return out


@pytest.mark.parametrize("k", [1, 3, 9])
def test_the_reconstruction_is_the_top_k_distribution_with_a_uniform_rest(k):
    logits = torch.randn(32, 10, dtype=torch.float64) * 4
    rows = topk_compress(logits, k)
    rec = topk_reconstruct(*rows.values(), 10)
    assert torch.allclose(rec.softmax(-1), _stands_for(logits, k), atol=1e-12)
    # the stored logits are the teacher's own (not shifted): top-k values read back bit for bit
    top = logits.topk(k, -1)
    assert torch.equal(rec.gather(-1, top.indices), top.values)
    assert rows["topk.indices"].dtype == torch.int16 and len(rows["topk.tail"]) == 32


def test_the_reconstruction_in_half_precision_and_with_a_masked_class():
    logits = (torch.randn(4, 100) * 3).bfloat16()
    logits[0, 5:] = float("-inf")  # a teacher that rules classes out: the tail keeps no mass
    rec = topk_reconstruct(*topk_compress(logits, 5).values(), 100)
    assert rec.dtype == torch.bfloat16 and rec.shape == (4, 100)
    p = rec.float().softmax(-1)
    assert torch.allclose(p.sum(-1), torch.ones(4)) and float(p[0, 5:].max()) == 0.0
    assert torch.allclose(p, _stands_for(logits.float(), 5).float(), atol=2e-2)  # bf16 rounding of the values


def test_round_trip_cold_and_warm_give_the_same_logits(tmp_path):
    x, index, logits = _batch()
    cold = TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8), topk=3)
    got = cold.features(x, index, lambda: Features(logits=logits))
    assert cold.computed_rows == 8 and not torch.equal(
        got.logits, logits
    )  # the lossy logits, even when computed
    assert torch.allclose(got.logits.double().softmax(-1), _stands_for(logits, 3), atol=1e-6)
    cold.flush()
    warm = TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8), topk=3)
    read = warm.features(x, index, pytest.fail)
    assert warm.read_rows == 8 and torch.equal(read.logits, got.logits)
    assert read.embedding is None and read.maps == {}
    assert warm.report()["teacher_cache_mode"] == "top-3" and warm.num_classes == 10


def test_exact_and_top_k_caches_never_serve_each_other(tmp_path):
    x, index, logits = _batch()
    exact = TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8))
    exact.features(x, index, lambda: Features(logits=logits))
    exact.flush()
    top3 = TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8), topk=3)
    top5 = TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8), topk=5)
    assert len({exact.dir, top3.dir, top5.dir}) == 3 and top3.key["topk"] == "3" and "topk" not in exact.key
    computed = []
    for cache in (top3, top5):
        cache.features(x, index, lambda: computed.append(1) or Features(logits=logits))  # a miss: computed
        cache.flush()
    assert computed == [1, 1]
    # and the exact cache, read again, still gives the exact logits
    again = TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8))
    assert torch.equal(again.features(x, index, pytest.fail).logits, logits)


def test_a_shard_of_another_mode_is_refused_even_under_the_same_key(tmp_path):
    """The key holds k; the shard's metadata is a second lock (a shard signed with our key, filed under the wrong
    key directory, is still never read as another mode)."""
    key = signing_key()
    rows = {"index": torch.arange(4), "input_digest": torch.arange(4), **topk_compress(torch.randn(4, 10), 3)}
    meta = {"format": "2", "key": "h", "epoch": "0", "rows": "4", TOPK_META: "3", CLASSES_META: "10"}
    write_shard(str(tmp_path), rows, meta, key)
    (path,) = [os.path.join(tmp_path, n) for n in os.listdir(tmp_path) if n.endswith(SHARD_SUFFIX)]
    assert read_shard(path, "h", 0, key, topk=3) is not None
    assert read_shard(path, "h", 0, key) is None  # exact
    assert read_shard(path, "h", 0, key, topk=5) is None
    write_shard(str(tmp_path / "bad"), rows, {**meta, CLASSES_META: "3"}, key)  # k not below the classes
    (bad,) = [os.path.join(tmp_path, "bad", n) for n in os.listdir(tmp_path / "bad")]
    assert read_shard(bad, "h", 0, key, topk=3) is None


@pytest.mark.parametrize(
    ("topk", "classes", "match"),
    [
        (0, None, "positive integer"),
        ("3", None, "positive integer"),
        (True, None, "positive"),
        (10, 10, "below 10"),
    ],
)
def test_bad_k_is_one_line(tmp_path, topk, classes, match):
    with pytest.raises(ValueError, match=match) as err:
        if classes is None:
            TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(4), topk=topk)
        else:
            x, index, logits = _batch(4, classes)
            TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(4), topk=topk).features(
                x, index, lambda: Features(logits=logits)
            )
    assert "\n" not in str(err.value) and "--teacher_cache_topk" in str(err.value)


def test_methods_reading_more_than_logits_are_refused_by_name(tmp_path):
    line = topk_refusal(
        {
            "kd": FeatureNeeds(logits=True),
            "crd": FeatureNeeds(embedding=True),
            "fitnet": FeatureNeeds(maps=("layer2",)),
        }
    )
    assert "crd reads the teacher's embedding" in line and "fitnet reads the teacher's feature maps" in line
    assert "kd " not in line.split(":")[0] and "\n" not in line
    assert topk_refusal({"kd": FeatureNeeds(logits=True), "dkd": FeatureNeeds(logits=True)}) is None
    # a direct user of the cache who hands it more than logits gets the same kind of line
    cache = TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8), topk=3)
    x, index, logits = _batch()
    with pytest.raises(ValueError, match="logits only, but it was given an embedding"):
        cache.features(x, index, lambda: Features(logits=logits, embedding=torch.zeros(8, 4)))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_disk_per_row(tmp_path, k):
    """Bytes on disk per row at ImageNet's 1000 classes: the exact cache stores 1000 float32 logits, a top-k one k
    float32 logits, k int16 classes and one float32 tail logit; both store an int64 row index and input digest."""
    rows = 1024
    per_row = {}
    for mode in (None, k):
        cache = TeacherCache(str(tmp_path), {"k": "size"}, CacheRows(rows), flush_rows=rows, topk=mode)
        x, index, logits = _batch(rows, 1000)
        cache.features(x, index, lambda logits=logits: Features(logits=logits))
        cache.flush()
        per_row[mode] = sum(cache.disk_usage().values()) / rows
    overhead = 8 + 8  # index, digest
    header = 1.0  # the safetensors header of one shard, shared by its 1024 rows
    assert 1000 * 4 + overhead <= per_row[None] <= 1000 * 4 + overhead + header
    assert k * (4 + 2) + 4 + overhead <= per_row[k] <= k * (4 + 2) + 4 + overhead + header


def test_reading_an_epoch_shows_a_bar_only_when_asked(tmp_path, monkeypatch, capfd):
    from hf_distill.training import teacher_cache

    monkeypatch.setattr(
        teacher_cache, "PROGRESS_DELAY_S", 0.0
    )  # a real epoch read is long enough; this one not
    x, index, logits = _batch()
    first = TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8), topk=3)
    first.features(x, index, lambda: Features(logits=logits))
    first.flush()
    capfd.readouterr()
    TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8), topk=3).features(x, index, pytest.fail)
    assert "Teacher cache: reading epoch 0" not in capfd.readouterr().err
    TeacherCache(str(tmp_path), {"k": "v"}, CacheRows(8), topk=3, progress=True).features(
        x, index, pytest.fail
    )
    assert "Teacher cache: reading epoch 0" in capfd.readouterr().err


# -- with a trainer --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(subset_train):
    return prepare_split(subset_train, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=32, seed=0)


def _trainer(out, tiny, method, **kw):
    return DistillationTrainer(
        model=timm_model(seed=0),
        teacher=timm_model(seed=100),
        objective=method,
        args=trainer_args(out, max_steps=2, data_seed=0),
        train_dataset=tiny.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
        **kw,
    )


def _train_with_topk(out, tiny, method, cache, k):
    t = _trainer(out, tiny, method)
    t.teacher_cache = TeacherCache.for_trainer(str(cache), t, topk=k)
    calls = []
    tap = t.teacher_tap
    t.teacher_tap = lambda *a: calls.append(1) or tap(*a)
    t.train()
    state = {n: p.detach().clone() for n, p in t.model.state_dict().items()}
    return t, state, len(calls)


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "kd[logit_standardize=true]"])
def test_logit_methods_train_on_a_top_k_cache_cold_and_warm_alike(tmp_path, tiny, method):
    name, _, hp = method.partition("[")
    objective = name if not hp else _objective(name, hp.rstrip("]"))
    cold, first, calls = _train_with_topk(tmp_path / "cold", tiny, objective, tmp_path / "cache", 3)
    assert calls == 2 and cold.teacher_cache.computed_rows == 32
    warm, second, calls = _train_with_topk(tmp_path / "warm", tiny, objective, tmp_path / "cache", 3)
    assert calls == 0 and warm.teacher_cache.read_rows == 32 and warm.teacher_cache.mode == "top-3"
    assert all(torch.equal(first[n], second[n]) for n in first)  # the same student, cold or warm
    exact = _trainer(tmp_path / "exact", tiny, objective)
    exact.train()
    assert any(
        not torch.equal(first[n], p) for n, p in exact.model.state_dict().items()
    )  # lossy: trained apart


def _objective(name, hp):
    from hf_distill.methods import DistillationObjective

    key, value = hp.split("=")
    return DistillationObjective.from_names(name, method_kwargs={name: {key: value == "true"}})


def test_the_trainer_refuses_top_k_for_a_method_that_reads_maps(tmp_path, tiny):
    t = _trainer(tmp_path, tiny, "kd,fitnet")
    with pytest.raises(ValueError, match="fitnet reads the teacher's feature maps") as err:
        TeacherCache.for_trainer(str(tmp_path / "cache"), t, topk=3)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="below 10"):
        TeacherCache.for_trainer(str(tmp_path / "cache"), _trainer(tmp_path, tiny, "kd"), topk=10)


@pytest.mark.parametrize(
    ("args", "bar"),
    [
        ({"disable_tqdm": False}, True),
        ({"disable_tqdm": True}, False),
        ({"disable_tqdm": False, "log_level": "error"}, False),
    ],
)
def test_the_bar_follows_the_trainers_quiet_settings(tmp_path, tiny, args, bar):
    t = DistillationTrainer(
        model=timm_model(seed=0),
        teacher=timm_model(seed=100),
        objective="kd",
        args=trainer_args(tmp_path, **args),
        train_dataset=tiny.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
    )
    assert TeacherCache.for_trainer(str(tmp_path / "cache"), t, topk=3).progress is bar


WIRED = "teacher_cache_topk" in inspect.signature(DistillationTrainer.__init__).parameters
NOT_WIRED = (
    "the patches topk__hf_distill__training__trainer.py.diff and run/{config,build}.py are not applied yet"
)


@pytest.mark.skipif(not WIRED, reason=NOT_WIRED)
def test_the_trainer_and_the_recipe_take_the_top_k_option(tmp_path, tiny):
    t = _trainer(tmp_path / "a", tiny, "kd", teacher_cache=str(tmp_path / "cache"), teacher_cache_topk=2)
    assert t.teacher_cache.topk == 2 and t.teacher_cache.key["topk"] == "2"
    with pytest.raises(ValueError, match="needs --teacher_cache"):
        _trainer(tmp_path / "b", tiny, "kd", teacher_cache_topk=2)
    argv = [
        "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "2", "--per_device_train_batch_size",
        "16", "--output_dir", str(tmp_path / "out"), "--teacher_cache", str(tmp_path / "cache"), "--save_strategy",
        "no", "--eval_strategy", "no", "--disable_tqdm", "true", "--teacher_cache_topk", "3",
    ]  # fmt: skip
    spec = importlib.util.spec_from_file_location("distill_recipe", REPO / "recipes" / "distill.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    first = recipe.main(argv)
    second = recipe.main(argv + ["--overwrite_output_dir"])
    assert first["teacher_cache_mode"] == "top-3" and first["teacher_cache_computed_rows"] == 32
    assert second["teacher_cache_read_rows"] == 32 and first["eval_accuracy"] == second["eval_accuracy"]
    assert second["teacher_cache_bytes"] < 32 * (3 * 6 + 4 + 16) + 1024  # rows + one header
    assert not math.isnan(second["train_loss"])
