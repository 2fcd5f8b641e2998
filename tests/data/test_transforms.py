"""Each model's own preprocessing (hf_distill/data/transforms.py): which pipeline a student gets, that the CIFAR one is
unchanged bit for bit, and that every pipeline's augmentation depends only on (seed, epoch, row)."""

import random

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import torchvision.transforms.functional as TF

from hf_distill.data.datasets import DataError, _mix, collate, prepare_split
from hf_distill.data.transforms import model_pipeline, resolve_kind, seeded_rng
from hf_distill.models.loading import load_model
from hf_distill.models.normalization import input_spec
from tests.helpers import timm_model


def _images(n=8, size=48, seed=0):
    rng = np.random.default_rng(seed)
    imgs = [PIL.Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": imgs, "label": [i % 2 for i in range(n)]}, features=feats)


def _reference_cifar(image, mean, std, size, seed):
    """The CIFAR pipeline as every earlier release computed it (frozen here as the reference): the README's default
    run and the accuracy rows were produced with exactly these tensors."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), resample=PIL.Image.BILINEAR)
    x = TF.pil_to_tensor(image).float().div_(255)
    if seed is not None:
        pad = max(1, size // 8)
        g = torch.Generator().manual_seed(seed)
        dx, dy, flip = torch.randint(0, 2 * pad + 1, (3,), generator=g).tolist()
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))[:, dy : dy + size, dx : dx + size]
        if flip % 2:
            x = x.flip(-1)
    mean, std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("size", [32, 40])
def test_the_zoo_gets_the_cifar_pipeline_bit_for_bit(subset_train, size):
    zoo = load_model("cifar_resnet8", num_labels=10)
    pipe = model_pipeline(zoo, image_size=size if size != 32 else None)
    assert pipe.kind == "cifar" and pipe.image_size == size
    seed = 3
    train = prepare_split(subset_train, (0,), (1,), 0, True, max_samples=6, seed=seed, transform=pipe.train)
    evals = prepare_split(subset_train, (0,), (1,), 0, False, max_samples=6, transform=pipe.eval)
    spec = input_spec(zoo)
    for epoch in (0, 1, 5):
        train.dataset.set_epoch(epoch)
        got = collate(train.dataset.__getitems__(list(range(6))))["pixel_values"]
        want = torch.stack(
            [
                _reference_cifar(subset_train[i]["img"], spec.mean, spec.std, size, _mix(seed, epoch, i))
                for i in range(6)
            ]
        )
        assert torch.equal(got, want)
    want_eval = torch.stack(
        [_reference_cifar(subset_train[i]["img"], spec.mean, spec.std, size, None) for i in range(6)]
    )
    assert torch.equal(collate([evals.dataset[i] for i in range(6)])["pixel_values"], want_eval)
    # prepare_split without a transform is the same CIFAR pipeline (the Python API of earlier releases)
    plain = prepare_split(subset_train, spec.mean, spec.std, size, True, max_samples=6, seed=seed).dataset
    plain.set_epoch(5)
    assert torch.equal(collate([plain[i] for i in range(6)])["pixel_values"], got)


def test_auto_picks_the_students_own_pipeline(tmp_path):
    import timm
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    assert resolve_kind(load_model("cifar_resnet8", num_labels=10))[0] == "cifar"
    assert (
        resolve_kind(timm.create_model("cifar_resnet8", num_classes=10))[0] == "cifar"
    )  # the zoo through timm
    assert resolve_kind(timm_model())[0] == "timm"
    assert resolve_kind(timm.create_model("test_resnet", num_classes=10))[0] == "timm"  # a raw timm module
    cfg = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32
    )
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "bare")
    assert (
        resolve_kind(load_model(str(tmp_path / "bare"), num_labels=2))[0] == "cifar"
    )  # no processor: as before
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    ).save_pretrained(tmp_path / "vit")
    vit = load_model(str(tmp_path / "vit"), num_labels=2)
    kind, processor = resolve_kind(vit)
    assert kind == "processor" and tuple(processor.image_std) == (0.25,) * 3
    pipe = model_pipeline(vit)
    assert (pipe.mean, pipe.std, pipe.image_size) == ((0.5,) * 3, (0.25,) * 3, 32)
    image = _images(1)[0]["image"]
    assert torch.equal(pipe.eval(image), processor(images=image, return_tensors="pt")["pixel_values"][0])
    assert pipe.train(image, 7).shape == (3, 32, 32) and torch.equal(
        pipe.train(image, 7), pipe.train(image, 7)
    )
    # an override replaces the processor's own eval by resize + center crop at the asked size
    assert model_pipeline(vit, image_size=24, crop_pct=0.75).eval(image).shape == (3, 24, 24)


def test_timm_pipeline_follows_the_models_data_config():
    pipe = model_pipeline(timm_model("test_resnet"), image_size=40, crop_pct=0.8)
    described = pipe.describe()
    assert pipe.kind == "timm" and described["pipeline"] == "timm" and pipe.image_size == 40
    assert "RandomResizedCrop" in described["train"] and "RandomHorizontalFlip" in described["train"]
    assert "Resize(size=50" in described["eval"] and "CenterCrop(size=(40, 40)" in described["eval"]
    image = _images(1)[0]["image"]
    assert pipe.eval(image).shape == (3, 40, 40) and torch.equal(pipe.eval(image), pipe.eval(image))


def test_a_saved_timm_model_keeps_the_size_it_was_trained_at(tmp_path):
    """A timm-format folder records its trained size in config.json's pretrained_cfg, but transformers rebuilds the
    timm module with its architecture's default data config: the library reads the saved one (as a teacher at 96 px,
    it must not be fed the architecture's 176 px)."""
    from hf_distill.hub.timm_export import save_timm_folder
    from hf_distill.models.normalization import InputSpec

    model = load_model("resnet10t", num_labels=10)
    assert input_spec(model).image_size == 176  # the architecture's default
    save_timm_folder(model, tmp_path, InputSpec((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 96))
    reloaded = load_model(str(tmp_path), role="teacher")
    assert reloaded.timm_model.pretrained_cfg["input_size"][-1] == 176  # what transformers rebuilt
    assert input_spec(reloaded) == InputSpec((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 96)
    pipe = model_pipeline(reloaded)
    assert pipe.image_size == 96 and pipe.mean == (0.5, 0.5, 0.5)
    assert pipe.eval(_images(1)[0]["image"]).shape == (3, 96, 96)


@pytest.mark.parametrize("kind", ["cifar", "timm"])
def test_augmentation_depends_only_on_seed_epoch_and_row(kind):
    ds = _images(8)
    pipe = model_pipeline(timm_model("test_resnet"), kind=kind, image_size=32)
    a = prepare_split(ds, (0,), (1,), 0, True, seed=1, transform=pipe.train).dataset
    b = prepare_split(ds, (0,), (1,), 0, True, seed=1, transform=pipe.train).dataset
    a.set_epoch(2)
    b.set_epoch(2)
    torch.manual_seed(0)
    random.seed(0)
    state = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    first = a.__getitems__([5, 1])
    assert (
        torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]
    )  # global RNGs untouched
    assert np.array_equal(np.random.get_state()[1], state[2])
    torch.manual_seed(123)
    random.seed(123)
    second = [b[1], b[5]]  # another order, another global RNG: the same images
    assert torch.equal(first[0]["pixel_values"], second[1]["pixel_values"])
    assert torch.equal(first[1]["pixel_values"], second[0]["pixel_values"])
    views = []
    for epoch in range(4):
        a.set_epoch(epoch)
        views.append(a[3]["pixel_values"])
    assert not all(torch.equal(views[0], v) for v in views[1:])  # the epochs see other crops


def test_dataloader_workers_see_the_main_process_images():
    ds = _images(6)
    pipe = model_pipeline(timm_model("test_resnet"), image_size=32)
    split = prepare_split(ds, (0,), (1,), 0, True, seed=4, transform=pipe.train).dataset
    split.set_epoch(1)
    main = collate([split[i] for i in range(6)])["pixel_values"]
    loader = torch.utils.data.DataLoader(split, batch_size=3, num_workers=2, collate_fn=collate)
    assert torch.equal(torch.cat([b["pixel_values"] for b in loader]), main)


def test_seeded_rng_restores_the_global_state():
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    with seeded_rng(99):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), before) and not torch.equal(inside, before)


def test_bad_options_are_one_line_errors(tmp_path):
    student = timm_model("test_resnet")
    with pytest.raises(DataError, match="Unknown --train_transform 'imagenet': use one of auto, cifar, timm"):
        model_pipeline(student, kind="imagenet")
    with pytest.raises(DataError, match="--crop_pct 1.5 would crop a square larger than the resized image"):
        model_pipeline(student, crop_pct=1.5)
    with pytest.raises(DataError, match="--image_size must be a positive"):
        model_pipeline(student, image_size=0)
    with pytest.raises(DataError, match="--crop_pct applies to the timm and processor pipelines"):
        model_pipeline(load_model("cifar_resnet8", num_labels=10), crop_pct=0.9)
    with pytest.raises(DataError, match="no image processor .* Use --train_transform timm or cifar"):
        model_pipeline(load_model("cifar_resnet8", num_labels=10), kind="processor")


def test_a_transform_of_the_wrong_shape_is_refused():
    class Wrong:
        mean, std, image_size, train, description = (
            torch.zeros(3, 1, 1),
            torch.ones(3, 1, 1),
            32,
            False,
            "wrong",
        )

        def __call__(self, image, seed=None):
            return torch.zeros(3, 30, 32)

    with pytest.raises(
        DataError, match=r"returns \(3, 30, 32\) torch.float32, not a float tensor of shape \(3, 32, 32\)"
    ):
        prepare_split(_images(2), (0,), (1,), 32, False, transform=Wrong())


def test_data_throughput_benchmark_runs(tmp_path):
    """benchmarks/data_throughput.py end to end on a few small rows (the figures themselves are not checked)."""
    import importlib.util
    import json

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "data_throughput", REPO / "benchmarks" / "data_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    args = [
        "--rows",
        "6",
        "--shards",
        "2",
        "--image_size",
        "48",
        "--batch_size",
        "2",
        "--steps",
        "1",
        "--threads",
        "1",
    ]
    try:
        bench.main(
            args + ["--teacher", "test_resnet", "--student", "test_resnet", "--out", str(tmp_path / "r.json")]
        )
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "r.json").read_text())
    assert all(result[k] > 0 for k in (*bench.LOADER_KEYS, "step_images_per_s", "workers_for_headroom"))
    assert result["rows"] == 6 and "RandomResizedCrop" in result["description"]
