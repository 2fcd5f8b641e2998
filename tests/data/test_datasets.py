import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_distill.data.datasets import DataError, collate, prepare_split, resolve_columns

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _ds(n=6, image="image", label="fine_label", size=32):
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    feats = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.Dataset.from_dict({image: imgs, label: [i % 3 for i in range(n)]}, features=feats)


def test_detects_cifar_columns(subset_train):
    assert resolve_columns(subset_train) == ("img", "label")
    assert resolve_columns(_ds()) == ("image", "fine_label")


def test_missing_label_column_is_a_clear_error():
    ds = _ds().rename_column("fine_label", "category_name")
    with pytest.raises(DataError, match="no label column .*--label_column"):
        resolve_columns(ds)


def test_image_column_that_is_not_images():
    ds = _ds().add_column("caption", ["x"] * 6)
    with pytest.raises(DataError, match="Column 'caption' is not an image column .*--image_column"):
        resolve_columns(ds, image_column="caption")


def test_text_label_column_rejected():
    ds = _ds().add_column("name", ["x"] * 6)
    with pytest.raises(DataError, match="not class ids"):
        resolve_columns(ds, label_column="name")


def test_prepared_split_yields_normalized_tensors_labels_and_index(subset_train):
    split = prepare_split(subset_train, MEAN, STD, 32, train=False, max_samples=10)
    assert split.num_classes == 10 and split.class_names[0] == "airplane"
    assert len(split.dataset) == 10 and split.labels.tolist() == [int(x) for x in subset_train["label"][:10]]
    batch = collate([split.dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    # eval transform is deterministic and normalizes with the given statistics
    raw = np.asarray(subset_train[0]["img"].convert("RGB"), dtype=np.float32) / 255
    expected = (torch.from_numpy(raw).permute(2, 0, 1) - 0.5) / 0.25
    assert torch.allclose(batch["pixel_values"][0], expected, atol=1e-5)


def test_train_augmentation_is_random_crop_and_flip(subset_train):
    split = prepare_split(subset_train, MEAN, STD, 32, train=True, max_samples=2)
    views = []
    for epoch in range(20):
        split.dataset.set_epoch(epoch)
        views.append(split.dataset[0]["pixel_values"])
    views = torch.stack(views)
    assert views.shape == (20, 3, 32, 32)
    assert views.std(0).mean() > 0  # the epochs see different crops/flips
    pad_value = (0 - 0.5) / 0.25  # zero padding of 4 px, normalized
    assert (views[:, :, :, 0] == pad_value).all(dim=(1, 2)).any()
    # every view is a shifted (and maybe flipped) copy of the plain image
    plain = prepare_split(subset_train, MEAN, STD, 32, train=False, max_samples=1).dataset[0]["pixel_values"]
    padded = torch.nn.functional.pad(plain, (4, 4, 4, 4), value=pad_value)
    for v in views:
        hits = [
            torch.allclose(c, v, atol=1e-6)
            for dy in range(9)
            for dx in range(9)
            for c in (padded[:, dy : dy + 32, dx : dx + 32], padded[:, dy : dy + 32, dx : dx + 32].flip(-1))
        ]
        assert any(hits)


def test_augmentation_depends_only_on_seed_epoch_and_row(subset_train):
    a = prepare_split(subset_train, MEAN, STD, 32, train=True, max_samples=8, seed=3).dataset
    b = prepare_split(subset_train, MEAN, STD, 32, train=True, max_samples=8, seed=3).dataset
    a.set_epoch(5)
    b.set_epoch(5)
    torch.manual_seed(0)
    first = a.__getitems__([6, 2])
    torch.manual_seed(123)  # the global RNG plays no part
    second = [b[2], b[6]]
    assert torch.equal(first[0]["pixel_values"], second[1]["pixel_values"])
    assert torch.equal(first[1]["pixel_values"], second[0]["pixel_values"])
    c = prepare_split(subset_train, MEAN, STD, 32, train=True, max_samples=8, seed=4).dataset
    c.set_epoch(5)
    assert not all(torch.equal(c[i]["pixel_values"], a[i]["pixel_values"]) for i in range(8))


def test_resize_when_model_input_differs():
    split = prepare_split(_ds(size=40), MEAN, STD, 32, train=False)
    assert split.dataset[0]["pixel_values"].shape == (3, 32, 32)
