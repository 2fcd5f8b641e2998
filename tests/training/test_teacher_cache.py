"""The exact teacher-output cache: a warm cache trains the same student, never returns a wrong output, survives
corrupted shards and concurrent writers, and reports its disk use."""

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import stat

import pytest
import safetensors.torch
import torch
from transformers import TrainerCallback

from hf_distill import DistillationTrainer
from hf_distill.data.datasets import prepare_split
from hf_distill.methods import Features
from hf_distill.training.teacher_cache import (
    TeacherCache,
    dataset_fingerprint,
    input_digests,
    module_fingerprint,
)
from hf_distill.training.teacher_cache_shards import (
    KEY_ENV,
    SHARD_SUFFIX,
    CacheKeyError,
    shard_metadata,
    shard_name,
    shard_tag,
    signer_id,
    signing_key,
    signing_key_path,
)
from tests.conftest import REPO
from tests.helpers import CIFAR_SPEC, CacheRows, timm_model, trainer_args


@pytest.fixture(scope="module", autouse=True)
def _probes():
    """The test-only method ``test_probe`` for the whole module (its module-scoped runs use it)."""
    from tests.helpers import PROBES, registered_methods

    with registered_methods(PROBES):
        yield


METHOD = "kd,test_probe"  # logits and embedding from the teacher, a stateful method that reads the row index
STEPS = 8  # 64 rows / 16 per batch = 4 steps per epoch: two epochs, two augmentations of every row


@pytest.fixture(scope="module")
def tiny(subset_train):
    return prepare_split(subset_train, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=64, seed=0)


class _CountTeacher:
    """Counts the teacher's forward passes (calls of the trainer's teacher tap)."""

    def __init__(self, trainer) -> None:
        self.calls = 0
        self.tap = trainer.teacher_tap
        trainer.teacher_tap = self

    def __call__(self, *args):
        self.calls += 1
        return self.tap(*args)


def _trainer(out, tiny, cache=None, teacher_seed=100, **kw):
    args = dict(max_steps=STEPS, optim_args="momentum=0.9", data_seed=0, lr_scheduler_type="linear")
    return DistillationTrainer(
        model=timm_model(seed=0),
        teacher=timm_model(seed=teacher_seed),
        objective=METHOD,
        args=trainer_args(out, **{**args, **kw}),
        train_dataset=tiny.dataset,
        student_input=CIFAR_SPEC,
        teacher_input=CIFAR_SPEC,
        teacher_cache=None if cache is None else str(cache),
    )


def _train(out, tiny, cache=None, resume=None, **kw):
    t = _trainer(out, tiny, cache, **kw)
    counter = _CountTeacher(t)
    t.train(resume_from_checkpoint=resume)
    state = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    return t, state, counter.calls


def _max_gap(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _shards(cache):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob(f"*{SHARD_SUFFIX}"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny):
    """An uncached run, and a cache filled by a first cached run."""
    root = tmp_path_factory.mktemp("cache")
    _, ref, calls = _train(root / "uncached", tiny)
    assert calls == STEPS
    t, filled, calls = _train(root / "cold", tiny, cache=root / "cache")
    assert calls == STEPS and t.teacher_cache.computed_rows == STEPS * 16 and t.teacher_cache.read_rows == 0
    assert _max_gap(ref, filled) == 0.0
    return ref, root / "cache", os.path.basename(t.teacher_cache.dir)


def test_warm_cache_trains_the_same_student_without_the_teacher(tmp_path, tiny, reference):
    ref, cache, key = reference
    before = _shards(cache)
    t, got, calls = _train(tmp_path, tiny, cache=cache)
    assert calls == 0  # every training batch came from the cache
    assert t.teacher_cache.read_rows == STEPS * 16 and t.teacher_cache.computed_rows == 0
    assert _shards(cache) == before  # nothing recomputed, nothing written
    assert _max_gap(ref, got) <= 1e-6
    report = t.teacher_cache.report()
    assert report["teacher_cache_epochs_stored"] == 2
    assert report["teacher_cache_bytes"] == sum(
        os.path.getsize(p) for p in (cache / key).rglob(f"*{SHARD_SUFFIX}")
    )
    assert report["teacher_cache_bytes_per_epoch"] == report["teacher_cache_bytes"] // 2


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_resume_in_the_middle_of_an_epoch_is_exact(tmp_path, tiny, reference, warm):
    ref, cache, key = reference
    cache = cache if warm else tmp_path / "cache"

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_training_stop = state.global_step == 6  # mid second epoch

    part = _trainer(tmp_path / "run", tiny, cache=cache, save_strategy="steps", save_steps=6)
    part.add_callback(StopAt())
    part.train()
    t, got, calls = _train(
        tmp_path / "run", tiny, cache=cache, resume=True, save_strategy="steps", save_steps=6
    )
    assert calls == (0 if warm else 2)
    assert _max_gap(ref, got) <= 1e-6
    if (
        not warm
    ):  # the interrupted and the resumed run together stored both epochs: a third run reads them all
        t, got, calls = _train(tmp_path / "again", tiny, cache=cache)
        assert calls == 0 and _max_gap(ref, got) <= 1e-6


def test_any_key_change_is_a_miss(tmp_path, tiny, reference, subset_train):
    _, cache, key = reference
    before = _shards(cache)
    _, other_ref, _ = _train(tmp_path / "ref", tiny, teacher_seed=5)
    _, other, calls = _train(tmp_path / "teacher", tiny, cache=cache, teacher_seed=5)  # other teacher weights
    assert calls == STEPS and _max_gap(other_ref, other) == 0.0
    reseeded = prepare_split(subset_train, CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, True, max_samples=64, seed=1)
    _, _, calls = _train(tmp_path / "seed", reseeded, cache=cache)  # another augmentation seed
    assert calls == STEPS
    assert set(before) < set(_shards(cache))  # new keys, new directories; the old shards untouched


def _ensemble_run(out, tiny, teachers, cache=None):
    t = DistillationTrainer(
        model=timm_model(seed=0),
        teacher=[timm_model(seed=s) for s in teachers] if len(teachers) > 1 else timm_model(seed=teachers[0]),
        objective="kd",
        args=trainer_args(
            out, max_steps=STEPS, optim_args="momentum=0.9", data_seed=0, lr_scheduler_type="linear"
        ),
        train_dataset=tiny.dataset,
        student_input=CIFAR_SPEC,  # each teacher converts it to its own input format, alone or in the ensemble
        teacher_cache=None if cache is None else str(cache),
    )
    t.train()
    return t, {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def test_an_ensemble_caches_each_teacher_under_its_own_key(tmp_path, tiny):
    rows = STEPS * 16
    _, ref = _ensemble_run(tmp_path / "uncached", tiny, [100, 5])
    cache = tmp_path / "cache"
    alone, _ = _ensemble_run(tmp_path / "alone", tiny, [100], cache)  # teacher 100 alone fills its key
    assert alone.teacher_cache.computed_rows == rows
    # the ensemble reads teacher 100 from that run's key and computes (and stores) teacher 5
    t, got = _ensemble_run(tmp_path / "cold", tiny, [100, 5], cache)
    assert (t.teacher_cache.read_rows, t.teacher_cache.computed_rows) == (rows, rows)
    assert [m.dir for m in t.teacher_cache.members][0] == alone.teacher_cache.dir
    assert _max_gap(ref, got) <= 1e-6
    t, got = _ensemble_run(tmp_path / "warm", tiny, [100, 5], cache)
    assert (t.teacher_cache.read_rows, t.teacher_cache.computed_rows) == (2 * rows, 0)
    assert _max_gap(ref, got) <= 1e-6
    report = t.teacher_cache.report()
    assert report["teacher_cache_read_rows"] == 2 * rows and len(report["teacher_cache_dir"]) == 2
    assert report["teacher_cache_epochs_stored"] == 2
    assert report["teacher_cache_bytes"] == sum(
        m.report()["teacher_cache_bytes"] for m in t.teacher_cache.members
    )


def test_the_teacher_precision_is_part_of_the_key(tmp_path, tiny):
    def trainer(precision):
        return DistillationTrainer(
            model=timm_model(seed=0),
            teacher=timm_model(seed=100),
            objective="kd",
            args=trainer_args(tmp_path / precision),
            train_dataset=tiny.dataset,
            teacher_cache=str(tmp_path / "c"),
            teacher_precision=precision,
        )

    f32, half = trainer("same"), trainer("bf16")
    assert (f32.teacher_cache.key["precision"], half.teacher_cache.key["precision"]) == ("fp32", "bf16")
    assert f32.teacher_cache.dir != half.teacher_cache.dir


def test_rows_whose_pixels_differ_are_a_miss(tmp_path, tiny):
    cache = TeacherCache(str(tmp_path), {"k": "v"}, tiny.dataset)
    x, index = torch.randn(4, 3, 8, 8), torch.arange(4)
    stored = Features(logits=torch.randn(4, 10))
    assert cache.features(x, index, lambda: stored) is stored
    cache.flush()
    fresh = TeacherCache(str(tmp_path), {"k": "v"}, tiny.dataset)
    assert torch.equal(fresh.features(x, index, pytest.fail).logits, stored.logits)  # read, not computed
    y = x.clone()
    y[2, 0, 0, 0] += 1e-6  # one pixel of one row: the key (epoch, rows) is the same, the input is not
    recomputed = Features(logits=torch.zeros(4, 10))
    assert fresh.features(y, index, lambda: recomputed) is recomputed
    assert not torch.equal(input_digests(x), input_digests(y))
    other = TeacherCache(str(tmp_path), {"k": "w"}, tiny.dataset)  # another key
    assert other.features(x, index, lambda: recomputed) is recomputed


def test_runs_that_cannot_or_need_not_cache(tmp_path, tiny):
    with pytest.raises(ValueError, match="prepare_split"):  # augmentation not seeded by (seed, epoch, row)
        dataset_fingerprint([{"pixel_values": torch.zeros(3, 32, 32)}])
    plain = DistillationTrainer(
        model=timm_model(),
        objective="none",
        args=trainer_args(tmp_path / "out"),
        train_dataset=tiny.dataset,
        teacher_cache=str(tmp_path / "cache"),
    )
    assert (
        plain.teacher_cache is None and not (tmp_path / "cache").exists()
    )  # the baseline never runs a teacher


def test_the_key_covers_the_teacher_input_conversion():
    from hf_distill.models.normalization import InputSpec, TeacherInput

    other = InputSpec((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32)
    same, converted = TeacherInput(CIFAR_SPEC, CIFAR_SPEC), TeacherInput(CIFAR_SPEC, other)
    assert module_fingerprint(same) == module_fingerprint(TeacherInput(CIFAR_SPEC, CIFAR_SPEC))
    assert module_fingerprint(same) != module_fingerprint(
        converted
    )  # its scale and shift are not in state_dict
    assert module_fingerprint(timm_model(seed=1)) != module_fingerprint(timm_model(seed=2))


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "stray_temporary_file"])
def test_a_damaged_shard_is_detected_and_rebuilt(tmp_path, tiny, reference, damage):
    ref, cache, key = reference
    shutil.copytree(cache, tmp_path / "cache")
    cache = tmp_path / "cache"
    victim = cache / key / _shards(cache / key)[0]  # the epoch-0 shard of the reference run's key
    data = victim.read_bytes()
    if damage == "truncate":  # a writer killed half-way (without the atomic rename)
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flip_a_byte":
        victim.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    else:  # what a killed writer really leaves: a temporary file, never read
        (victim.parent / ".tmp-123-abc").write_bytes(data[:100])
    t, got, calls = _train(tmp_path / "run", tiny, cache=cache)
    assert _max_gap(ref, got) <= 1e-6
    if damage == "stray_temporary_file":
        assert calls == 0 and t.teacher_cache.rejected_shards == 0
    else:
        assert (
            calls == 4 and t.teacher_cache.rejected_shards == 1
        )  # that epoch's batches ran the teacher again
        assert len(_shards(cache / key)) == 2  # the damaged shard was replaced
        t, _, calls = _train(tmp_path / "again", tiny, cache=cache)
        assert calls == 0 and t.teacher_cache.rejected_shards == 0


def _poisoned(data: bytes) -> bytes:
    """A shard's bytes with its logits replaced by confident wrong ones, metadata kept: what an attacker with write
    access to a shared cache dir would store."""
    tensors = safetensors.torch.load(data)
    tensors["logits"] = -10 * tensors["logits"]
    return safetensors.torch.save(tensors, metadata=shard_metadata(data))


@pytest.mark.parametrize("forgery", ["rehashed", "claims_your_key", "signed_by_another_user"])
def test_a_forged_shard_is_never_read(tmp_path, tiny, reference, forgery, caplog):
    """A poisoned shard, named as each forger can: by its SHA-256 (what the cache trusted before it signed shards),
    with this user's signer id and a tag under another key, or validly signed by another user of a shared cache
    dir. None is read: the run trains the uncached run's student, the teacher runs again for that epoch."""
    ref, cache, key = reference
    shutil.copytree(cache, tmp_path / "cache")
    cache = tmp_path / "cache"
    victim = cache / key / _shards(cache / key)[0]  # the epoch-0 shard of the reference run's key
    forged = _poisoned(victim.read_bytes())
    victim.unlink()
    other = b"\x01" * 32  # the forger's own key
    name = {
        "rehashed": hashlib.sha256(forged).hexdigest() + SHARD_SUFFIX,
        "claims_your_key": f"{signer_id(signing_key())}-{shard_tag(other, forged)}{SHARD_SUFFIX}",
        "signed_by_another_user": shard_name(other, forged),
    }[forgery]
    (victim.parent / name).write_bytes(forged)
    with caplog.at_level(logging.WARNING, logger="hf_distill.training.teacher_cache"):
        t, got, calls = _train(tmp_path / "run", tiny, cache=cache)
    assert _max_gap(ref, got) <= 1e-6
    assert calls == 4  # the forged epoch's batches ran the teacher
    refused = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    if forgery == "claims_your_key":  # refused in one warning line, and removed
        assert t.teacher_cache.rejected_shards == 1 and not (victim.parent / name).exists()
        assert len(refused) == 1 and name in refused[0] and "\n" not in refused[0]
    else:  # not this user's shard: never read, left to its owner
        assert t.teacher_cache.rejected_shards == 0 and t.teacher_cache.foreign_shards >= 1
        assert (victim.parent / name).exists() and not refused


def test_the_signing_key_is_private_outside_the_cache_and_made_on_first_use(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "xdg" / "hf_distill" / "cache.key"
    assert signing_key_path() == str(path)
    key = signing_key()
    assert len(key) == 32 and path.read_bytes() == key and signing_key() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "elsewhere.key"))
    assert signing_key() != key  # another key file, another key
    path.chmod(0o644)  # readable by others: anyone could sign shards with it
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(CacheKeyError) as err:
        signing_key()
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "not private" in msg and "chmod 600" in msg
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(CacheKeyError, match="holds 5 bytes, not a key of 32: delete it"):
        signing_key()


def _forked_child() -> None:
    """Make a forked child safe for torch: GNU OpenMP's thread pool does not survive fork, so a child that enters a
    parallel region the parent had used waits forever on the parent's (absent) workers; one thread never enters one.
    """
    torch.set_num_threads(1)


def _write_rows(root: str, worker: int) -> None:
    """40 batches of 64 rows, a shard each; the rows of half the batches are written by both workers."""
    _forked_child()
    cache = TeacherCache(root, {"k": "shared"}, CacheRows(4096), flush_rows=64)
    for step in range(40):
        index = torch.arange(64) + 64 * ((step + worker * 20) % 64)
        cache.features(_pixels(index), index, lambda index=index: Features(logits=_logits(index)))
    cache.flush()


def _read_until(root: str, done, seen) -> None:
    """Load the epoch again and again while the writers run; record the shards it had to reject."""
    _forked_child()
    cache = TeacherCache(root, {"k": "shared"}, CacheRows(4096))
    loads = 0
    while not done.is_set():
        cache._load_epoch(0)
        loads += 1
    seen.put((cache.rejected_shards, loads))


def _pixels(index):
    return index.double().view(-1, 1, 1, 1).expand(len(index), 3, 4, 4).float()


def _logits(index):
    return index.float().view(-1, 1).repeat(1, 100)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_writers_at_once_never_corrupt_the_cache(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the children inherit the imports: no 20 s start-up each
    done, seen = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read_until, args=(str(tmp_path), done, seen))
    writers = [ctx.Process(target=_write_rows, args=(str(tmp_path), w)) for w in (0, 1)]
    try:
        reader.start()
        for w in writers:
            w.start()
        for w in writers:
            w.join(timeout=300)
        done.set()
        rejected, loads = seen.get(timeout=300)
        reader.join(timeout=60)
    finally:  # a child that hangs fails this test instead of holding pytest at exit
        for p in (reader, *writers):
            if p.is_alive():
                p.kill()
    assert all(w.exitcode == 0 for w in writers) and reader.exitcode == 0
    assert rejected == 0 and loads > 1  # a reader running meanwhile never saw a partial shard
    cache = TeacherCache(str(tmp_path), {"k": "shared"}, CacheRows(4096))
    index = torch.arange(60 * 64)  # every row either worker wrote
    got = cache.features(_pixels(index), index, pytest.fail)
    assert torch.equal(got.logits, _logits(index)) and cache.rejected_shards == 0


def test_every_stored_row_reads_back_after_concurrent_writes(tmp_path):
    """The same check without processes: shards written by two caches of one key interleave safely."""
    a, b = (TeacherCache(str(tmp_path), {"k": "shared"}, CacheRows(256), flush_rows=32) for _ in range(2))
    for step in range(8):
        for w, cache in enumerate((a, b)):
            index = torch.arange(32) + 32 * ((step + 4 * w) % 8)
            x = index.float().view(-1, 1, 1, 1).expand(32, 3, 2, 2)
            cache.features(
                x, index, lambda index=index: Features(logits=index.float().view(-1, 1).repeat(1, 3))
            )
    reader = TeacherCache(str(tmp_path), {"k": "shared"}, CacheRows(256))
    index = torch.arange(256)
    x = index.float().view(-1, 1, 1, 1).expand(256, 3, 2, 2)
    got = reader.features(x, index, pytest.fail)
    assert torch.equal(got.logits, index.float().view(-1, 1).repeat(1, 3)) and reader.rejected_shards == 0


def test_the_recipe_reports_the_cache(tmp_path):
    argv = [
        "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "2", "--per_device_train_batch_size",
        "16", "--output_dir", str(tmp_path / "out"), "--teacher_cache", str(tmp_path / "cache"), "--save_strategy",
        "no", "--eval_strategy", "no", "--disable_tqdm", "true",
    ]  # fmt: skip
    spec = importlib.util.spec_from_file_location("distill_recipe", REPO / "recipes" / "distill.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    first = recipe.main(argv)
    second = recipe.main(argv + ["--overwrite_output_dir"])  # the same folder again: the HF examples' flag
    assert first["teacher_cache_computed_rows"] == 32 and first["teacher_cache_read_rows"] == 0
    assert second["teacher_cache_read_rows"] == 32 and second["teacher_cache_computed_rows"] == 0
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["teacher_cache_bytes"] == second["teacher_cache_bytes"] > 32 * 10 * 4  # logits of 32 rows
    assert first["eval_accuracy"] == second["eval_accuracy"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_runs_read_the_cache_exactly(tmp_path):
    """`accelerate launch` with 2 processes: uncached, cache filled, cache read: the same final weights."""
    from safetensors.torch import load_file

    from tests.recipes.test_multiprocess import launch

    args = [
        "--dataset", str(REPO / "assets" / "cifar10-subset"), "--teacher", str(REPO / "assets" / "teachers" / "cifar10-resnet56"),
        "--student", "cifar_resnet8", "--method", "kd", "--max_train_samples", "64", "--max_eval_samples", "16",
        "--per_device_train_batch_size", "8", "--max_steps", "6", "--report_to", "none", "--use_cpu", "true",
        "--disable_tqdm", "true", "--save_strategy", "no", "--eval_strategy", "no",
    ]  # fmt: skip
    cache = tmp_path / "cache"
    states, shards = [], []
    for name, extra in (
        ("uncached", []),
        ("cold", ["--teacher_cache", str(cache)]),
        ("warm", ["--teacher_cache", str(cache)]),
    ):
        run = tmp_path / name
        run.mkdir()
        launch(args + ["--output_dir", str(run / "out")] + extra, run)
        states.append(load_file(str(run / "final_state.safetensors")))
        shards.append(_shards(cache) if cache.exists() else [])
    assert shards[1] and shards[2] == shards[1]  # the warm run computed (and wrote) nothing
    assert _max_gap(states[0], states[1]) == 0.0
    assert _max_gap(states[0], states[2]) <= 1e-6
