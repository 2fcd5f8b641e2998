"""Streaming training data (hf_distill/data/streaming.py, docs/streaming.md): each process reads its own part of every
pass, shuffling and augmentation are seeded (per pass and row identity), the loader's batches do not depend on its
workers, a resumed run continues at the exact row (also after kill -9), and what a stream cannot do is one line."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import datasets
import pyarrow
import pytest
import safetensors.torch
import torch
from transformers import TrainingArguments

from hf_distill import DistillationTrainer
from hf_distill.data.streaming import (
    StreamingImageDataset,
    load_image_stream,
    prepare_stream,
    row_identity,
)
from hf_distill.data.transforms import CifarTransform, DataError
from tests.conftest import REPO, SUBSET, TEACHER_DIR
from tests.helpers import CIFAR_SPEC, load_recipe, recipe_error_line, timm_model


def write_shards(folder, rows: int, shards: int, test_rows: int = 0) -> str:
    """``rows`` CIFAR rows as ``shards`` parquet shards (``data/train-*``), plus a ``test`` split when asked."""
    ds = datasets.load_dataset(str(SUBSET), split="train")
    data = os.path.join(str(folder), "data")
    os.makedirs(data, exist_ok=True)
    train = ds.select(range(rows))
    for i in range(shards):
        train.shard(shards, i, contiguous=True).to_parquet(
            os.path.join(data, f"train-{i:05d}-of-{shards:05d}.parquet")
        )
    if test_rows:
        ds.select(range(rows, rows + test_rows)).to_parquet(os.path.join(data, "test-00000-of-00001.parquet"))
    return str(folder)


@pytest.fixture(autouse=True)
def short_pass_end_pause(monkeypatch):
    """The pause of datasets at the end of every pass over parquet shards, shortened (tests/scripts/short_pass_pause.py
    says why): these tests read many short passes in one long-lived process."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 rows in 4 shards (a multiple of 2 processes: each reads its own shards)."""
    return write_shards(tmp_path_factory.mktemp("four"), 40, 4)


@pytest.fixture(scope="module")
def odd_shards(tmp_path_factory):
    """40 rows in 3 shards (not a multiple of 2 processes: each reads all and keeps one row in two)."""
    return write_shards(tmp_path_factory.mktemp("three"), 40, 3)


def _stream(folder, buffer=16, seed=0, rank=0, world=1) -> StreamingImageDataset:
    split = prepare_stream(
        load_image_stream(folder), CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, seed=seed, shuffle_buffer=buffer
    )
    split.dataset.for_process(rank, world)
    return split.dataset


def _ids(stream: StreamingImageDataset, n: int) -> list[tuple[int, int]]:
    out, it = [], stream.raw_rows()
    for _ in range(n):
        row = next(it)
        out.append((row["pass"], row["id"]))
    return out


def _all_ids(folder) -> Counter:
    ds = datasets.load_dataset(folder, split="train", streaming=True).cast_column(
        "img", datasets.Image(decode=False)
    )
    return Counter(row_identity(r["img"], r["label"]) for r in ds)


def test_row_identity_follows_the_content_not_the_place(shards):
    ids = _all_ids(shards)
    assert sum(ids.values()) == 40 and len(ids) == 40  # the subset's 40 rows are distinct
    assert set(ids) == {i for _, i in _ids(_stream(shards, buffer=0), 40)}
    assert set(ids) == {i for _, i in _ids(_stream(shards, buffer=16, seed=5), 40)}


@pytest.mark.parametrize("fixture", ["shards", "odd_shards"])
def test_two_processes_together_read_every_row_once_per_pass(request, fixture):
    folder = request.getfixturevalue(fixture)
    every = set(_all_ids(folder))
    parts = [_stream(folder, rank=r, world=2) for r in (0, 1)]
    for p in range(3):  # passes go on without end, each process its own share of each
        seen = Counter()
        for part in parts:
            rows = list(part._read(part.pass_stream(p), p))
            assert 0 < len(rows) < 40
            seen.update(row_identity(r["img"], r["label"]) for r in rows)
        assert set(seen) == every and set(seen.values()) == {1}, p


def test_shuffle_is_seeded_and_changes_with_the_pass(shards):
    first = _ids(_stream(shards, seed=1), 80)
    assert first == _ids(_stream(shards, seed=1), 80)  # same seed, same order, pass after pass
    assert [i for _, i in first[:40]] != [i for _, i in _ids(_stream(shards, seed=2), 40)]
    pass0, pass1 = [i for p, i in first if p == 0], [i for p, i in first if p == 1]
    assert sorted(pass0) == sorted(pass1) and pass0 != pass1  # every row once per pass, in another order


def test_augmentation_depends_on_seed_pass_and_row_not_on_the_position(shards):
    a, b = _stream(shards, buffer=0), _stream(shards, buffer=16)
    it_a, it_b = a.raw_rows(), b.raw_rows()
    rows_a = {(r["pass"], r["id"]): r for r in (next(it_a) for _ in range(40))}
    rows_b = {(r["pass"], r["id"]): r for r in (next(it_b) for _ in range(40))}
    assert rows_a.keys() == rows_b.keys()
    key = next(iter(rows_a))
    x_a = a.rows[rows_a[key]]["pixel_values"]
    assert torch.equal(
        x_a, b.rows[rows_b[key]]["pixel_values"]
    )  # elsewhere in another order: the same crop and flip
    assert not torch.equal(
        x_a, a.rows[{**rows_a[key], "pass": 1}]["pixel_values"]
    )  # the next pass: another one
    assert not torch.equal(x_a, _stream(shards, seed=3).rows[rows_a[key]]["pixel_values"])  # another seed too


def test_loader_batches_do_not_depend_on_the_workers(shards):
    def batches(workers):
        loader = _stream(shards).dataloader(8, num_workers=workers, prefetch_factor=2 if workers else None)
        it = iter(loader)
        return [next(it) for _ in range(7)]  # past the end of pass 0 (40 rows)

    for b0, b2 in zip(batches(0), batches(2)):
        assert torch.equal(b0["index"], b2["index"]) and torch.equal(b0["pixel_values"], b2["pixel_values"])


def test_seek_continues_at_the_exact_row_across_passes(shards, tmp_path):
    whole = _ids(_stream(shards), 100)
    reader = _stream(shards)
    _ids(reader, 95)  # reads pass 0 and 1 to their ends: their lengths are what a checkpoint records
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    (ckpt / "stream_state_0.json").write_text(__import__("json").dumps(reader.position(70)))
    resumed = _stream(shards)
    resumed.load_position(str(ckpt))
    resumed.seek(70)
    assert resumed.start == (1, 30)
    assert _ids(resumed, 30) == whole[70:]
    with pytest.raises(DataError, match="after 64 rows"):
        resumed.seek(64)
    other = _stream(shards, buffer=8)
    with pytest.raises(DataError, match="shuffle_buffer 16 -> 8"):
        other.load_position(str(ckpt))


def test_an_unreadable_shard_met_in_a_stream_is_one_line(shards, monkeypatch):
    stream = _stream(shards)

    def broken(epoch):
        def rows():
            raise pyarrow.ArrowInvalid("Parquet magic bytes not found in footer")
            yield  # a generator: the error comes at the first next()

        return rows()

    monkeypatch.setattr(stream, "pass_stream", broken)
    with pytest.raises(DataError, match="cannot be read in pass 0.*resume with --resume_from_checkpoint"):
        next(stream.raw_rows())


# -- the Python API -------------------------------------------------------------------------------------------------
def _api_args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=0.05, optim="sgd",
        report_to="none", save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    return TrainingArguments(**{**base, **kw})


def test_a_transform_of_the_wrong_shape_is_refused_on_the_first_row(shards):
    """The stream's first row is checked as a map-style split's is (hf_distill.data.datasets.check_pixel_values)."""

    class Cropped(CifarTransform):
        def __call__(self, image, seed=None):
            return super().__call__(image, seed)[:, :30]

    cropped = Cropped(CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, train=True)
    with pytest.raises(
        DataError, match=r"returns \(3, 30, 32\) torch.float32, not a float tensor of shape \(3, 32"
    ):
        prepare_stream(load_image_stream(shards), CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, transform=cropped)


def test_a_stream_trains_through_the_python_api(shards, tmp_path):
    from tests.helpers import smooth_model

    split = prepare_stream(load_image_stream(shards), CIFAR_SPEC.mean, CIFAR_SPEC.std, 32, shuffle_buffer=8)
    trainer = DistillationTrainer(
        model=smooth_model(), teacher=timm_model(seed=100), objective="kd", args=_api_args(tmp_path),
        train_dataset=split.dataset, student_input=CIFAR_SPEC, teacher_input=CIFAR_SPEC,
    )  # fmt: skip
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    out = trainer.train()
    assert out.global_step == 3 and any(
        not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items()
    )


def test_the_python_api_refuses_what_a_stream_cannot_train(shards, tmp_path):
    from tests.helpers import smooth_model

    split = prepare_stream(load_image_stream(shards), CIFAR_SPEC.mean, CIFAR_SPEC.std, 32)
    common = dict(teacher=timm_model(seed=100), args=_api_args(tmp_path), student_input=CIFAR_SPEC,
                  teacher_input=CIFAR_SPEC)  # fmt: skip
    with pytest.raises(ValueError, match="crd keeps a state per training row"):
        DistillationTrainer(model=smooth_model(), objective="crd", train_dataset=split.dataset, **common)
    with pytest.raises(ValueError, match="prepare_stream"):
        DistillationTrainer(
            model=smooth_model(), objective="kd", train_dataset=load_image_stream(shards), **common
        )
    with pytest.raises(ValueError, match="teacher_cache"):
        DistillationTrainer(
            model=smooth_model(),
            objective="kd",
            train_dataset=split.dataset,
            teacher_cache=str(tmp_path),
            **common,
        )
    with pytest.raises(ValueError, match="lr_milestones counts epochs"):
        DistillationTrainer(
            model=smooth_model(), objective="kd", train_dataset=split.dataset, lr_milestones=[1.0], **common
        )


# -- the recipe: bad input in one line, nothing written ---------------------------------------------------------------
@pytest.fixture(scope="module")
def recipe():
    return load_recipe("distill_recipe_stream")


def _recipe_args(folder, out, *extra):
    return [
        "--dataset", str(folder), "--streaming", "--teacher", str(TEACHER_DIR), "--output_dir", str(out),
        "--per_device_train_batch_size", "8", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def test_a_stream_trains_the_baseline_beside_the_distilled_student(recipe, tmp_path):
    """``--baseline`` on a stream: the student alone reads the same stream, and its record says it did."""
    folder = write_shards(tmp_path / "shards", 40, 2, test_rows=16)
    out = tmp_path / "out"
    results = recipe.main(
        _recipe_args(folder, out, "--max_steps", "3", "--student", "cifar_resnet8", "--baseline")
    )
    assert 0.0 <= results["baseline_accuracy"] <= 1.0 and 0.0 <= results["eval_accuracy"] <= 1.0
    record = __import__("json").loads((out / "baseline" / "baseline_results.json").read_text())
    assert record["signature"]["streaming"] is True and record["signature"]["objective"]["methods"] == {}
    assert record["signature"]["max_steps"] == 3 and (out / "baseline" / "model.safetensors").exists()


def test_bad_streaming_input_is_one_line_and_writes_nothing(recipe, capsys, shards, tmp_path):
    out = tmp_path / "out"
    cases = [
        (_recipe_args(shards, out), "--streaming needs --max_steps"),
        (
            _recipe_args(shards, out, "--max_steps", "4", "--method", "crd"),
            "--method crd keeps a state per training row",
        ),
        (
            _recipe_args(shards, out, "--max_steps", "4", "--method", "ab"),
            "--method ab starts with an initialization",
        ),
        (
            _recipe_args(shards, out, "--max_steps", "4", "--teacher_cache", str(tmp_path / "c")),
            "--teacher_cache",
        ),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((_recipe_args(empty, out, "--max_steps", "4"), "holds no .parquet or .arrow shard"))
    corrupt = write_shards(tmp_path / "corrupt", 12, 3)
    bad = os.path.join(corrupt, "data", "train-00001-of-00003.parquet")
    with open(bad, "wb") as f:
        f.write(b"not a parquet file" * 10)
    cases.append((_recipe_args(corrupt, out, "--max_steps", "4"), f"The shard {bad} cannot be read"))
    for argv, expected in cases:
        line = recipe_error_line(recipe, capsys, argv)
        assert expected in line, line
        assert not out.exists()  # refused before the output folder is touched


# -- exact resume after kill -9 ----------------------------------------------------------------------------------------
def _start(folder, out, extra=()):
    cmd = [
        sys.executable,
        str(REPO / "tests" / "scripts" / "short_pass_pause.py"),  # the recipe, without the 5 s pause per pass
        str(REPO / "recipes" / "distill.py"),
        *_recipe_args(folder, out, *RESUME_RUN, *extra),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


#: 24 steps of 8 rows from 40 (5 steps a pass): the run crosses four pass boundaries; a checkpoint every 4 steps
RESUME_RUN = [
    "--max_steps", "24", "--streaming_shuffle_buffer", "16", "--save_strategy", "steps", "--save_steps", "4",
    "--eval_split", "", "--learning_rate", "0.05", "--optim", "sgd", "--seed", "3", "--student", "test_vit",
    "--report_to", "none", "--use_cpu", "true", "--dataloader_num_workers", "0",
]  # fmt: skip


@pytest.mark.slow
def test_a_stream_killed_mid_run_resumes_to_bit_identical_weights(shards, tmp_path):
    whole = _start(shards, tmp_path / "whole")
    killed = _start(shards, tmp_path / "killed")
    marker = tmp_path / "killed" / "checkpoint-8" / "trainer_state.json"
    deadline = time.time() + 600
    while not marker.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert killed.poll() is None, killed.communicate()[0][-3000:]  # still training: the kill lands mid-run
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = _start(shards, tmp_path / "killed", ["--resume_from_checkpoint", "true"])
    for p in (whole, resumed):
        output = p.communicate(timeout=900)[0]
        assert p.returncode == 0, output[-3000:]
    assert "Resuming the stream at pass" in output
    a = safetensors.torch.load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = safetensors.torch.load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
