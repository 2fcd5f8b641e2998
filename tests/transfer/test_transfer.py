"""Representation transfer (hf_distill.transfer, recipes/transfer.py): the probe measures features, every model
kind gives them, results go to the card, bad input is one line."""

from __future__ import annotations

import shlex
import shutil

import datasets
import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import ResNetConfig, ResNetForImageClassification

from hf_distill.hub import EvaluationResult, update_card_file
from hf_distill.models.modeling_cifar import create_cifar_model
from hf_distill.transfer import (
    ProbeConfig,
    TransferError,
    classifier_layer,
    extract_features,
    fit_linear_probe,
    linear_probe,
    load_frozen_model,
    load_transfer_data,
    prepare,
    select_classes,
    set_classifier,
    write_class_subset,
)
from tests.conftest import JPEG_TEACHER_DIR, REPO, STUDENT_INIT_DIR, SUBSET
from tests.helpers import recipe_error_line, timm_model
from tests.hub.conftest import load_recipe

FEW = {"max_train_samples": 300, "max_test_samples": 200}


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("transfer")


@pytest.fixture(scope="module")
def cifar():
    return load_transfer_data(str(SUBSET))


def _hf_resnet(image_size: int = 32) -> ResNetForImageClassification:
    torch.manual_seed(0)
    cfg = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_labels=10,
        image_size=image_size,
    )
    return ResNetForImageClassification(cfg).eval()


# -- the probe measures the features -------------------------------------------------------------------------------
def test_probe_of_the_pretrained_teacher_beats_the_same_network_untrained(cifar):
    teacher, spec = load_frozen_model(str(JPEG_TEACHER_DIR))
    torch.manual_seed(0)
    untrained, untrained_spec = load_frozen_model("cifar_resnet56_a")
    assert spec == untrained_spec  # same architecture, same input: only the weights differ
    pretrained = linear_probe(teacher, spec, cifar, model_ref="teacher", **FEW).evaluation
    random_init = linear_probe(untrained, spec, cifar, model_ref="random", **FEW).evaluation
    assert pretrained.num_samples == random_init.num_samples == 200
    # measured: 0.855 vs 0.19 on these 300 training / 200 held-out test images
    assert pretrained.accuracy > random_init.accuracy + 0.3, (pretrained.accuracy, random_init.accuracy)


def test_fitted_probe_is_the_regularized_optimum_and_c_sets_its_strength():
    g = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(4, 6, generator=g)
    labels = torch.arange(200) % 4
    feats = 5.0 + 10.0 * (centers[labels] + torch.randn(200, 6, generator=g))  # far from standardized
    probe = fit_linear_probe(feats, labels, 4, ProbeConfig(c=1.0))
    # stationarity of the penalized objective, recomputed independently of the fit
    w = probe.weight.clone().requires_grad_(True)
    b = probe.bias.clone().requires_grad_(True)
    x = (feats.double() - feats.double().mean(0)) / feats.double().std(0, unbiased=False)
    loss = F.cross_entropy(x @ w.T + b, labels) + (w**2).sum() / (2 * 1.0 * len(x))
    loss.backward()
    assert w.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5
    assert (probe.logits(feats).argmax(1) == labels).float().mean() > 0.9
    weak = fit_linear_probe(feats, labels, 4, ProbeConfig(c=0.01))
    assert weak.weight.norm() < 0.5 * probe.weight.norm()


# -- every model kind ----------------------------------------------------------------------------------------------
def _classifier_input(model, x):
    seen = []
    head = model.timm_model.get_classifier() if hasattr(model, "timm_model") else model.classifier
    handle = head.register_forward_pre_hook(lambda m, a: seen.append(a[0].flatten(1)))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_timm_and_transformers_models_give_their_classifier_input(kind, cifar, tmp_path):
    if kind == "timm":
        model, spec = load_frozen_model("test_resnet")  # a timm name: a fresh timm model in the wrapper
        model = timm_model().eval()  # the same architecture, seeded
    else:
        _hf_resnet(image_size=48).save_pretrained(tmp_path)  # a transformers folder, input size 48
        model, spec = load_frozen_model(str(tmp_path))
        assert spec.image_size == 48
    split = prepare(cifar, cifar.test, spec, False, max_samples=6)
    assert split.dataset[0]["pixel_values"].shape[-1] == spec.image_size != 32  # resized to the model's input
    feats, labels = extract_features(model, split.dataset, batch_size=4)
    batch = torch.stack([split.dataset[i]["pixel_values"] for i in range(6)])
    assert torch.allclose(feats, _classifier_input(model, batch), atol=1e-5)
    assert labels.tolist() == split.labels.tolist()
    result = linear_probe(model, spec, cifar, max_train_samples=20, max_test_samples=10)
    assert result.feature_dim == feats.shape[1] and result.num_train == 20


@pytest.mark.parametrize(
    "make", [lambda: create_cifar_model("resnet20", num_labels=10), timm_model, _hf_resnet]
)
def test_a_probe_loaded_into_the_classifier_gives_the_probes_logits(make, cifar):
    model = make().eval()
    feats = torch.randn(40, classifier_layer(model).in_features)
    probe = fit_linear_probe(feats, torch.arange(40) % 10, 10)
    set_classifier(model, probe)
    assert torch.allclose(classifier_layer(model)(feats), probe.logits(feats).float(), atol=1e-4)


# -- data ----------------------------------------------------------------------------------------------------------
def test_classes_are_selected_and_renumbered(subset_test):
    sub = select_classes(subset_test, "label", [7, 5])
    assert sub.features["label"].names == ["horse", "dog"]
    assert sorted(set(sub["label"])) == [0, 1] and len(sub) == 200
    original = subset_test.filter(lambda y: y in (5, 7), input_columns="label")
    assert [{7: 0, 5: 1}[y] for y in original["label"]] == sub["label"]


def test_class_subset_keeps_the_label_set_for_a_teacher(tmp_path):
    out = write_class_subset(str(SUBSET), [0, 1], str(tmp_path / "sub"), splits=("test",))
    ds = datasets.load_dataset("parquet", data_files={"test": f"{out}/test.parquet"}, split="test")
    assert ds.features["label"].names[9] == "truck" and sorted(set(ds["label"])) == [0, 1] and len(ds) == 200


# -- recipe, card, fine-tuning -------------------------------------------------------------------------------------
def _model_index(folder):
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    return meta["model-index"][0]["results"]


def test_recipe_writes_probe_and_finetune_entries_to_the_card(recipe, tmp_path, capsys):
    folder = tmp_path / "student"
    shutil.copytree(STUDENT_INIT_DIR, folder)
    plain = EvaluationResult(
        "student", "cifar10-subset", "test", 100, 0.5
    )  # a plain evaluation on the same split
    update_card_file(folder / "README.md", plain.as_eval_results())
    common = ["--model", str(folder), "--dataset", str(SUBSET), "--classes", "5,6,7,8,9", "--update_card"]
    probe = recipe.main(common + ["--max_train_samples", "200", "--max_test_samples", "100"])
    assert "model card updated" in capsys.readouterr().out
    assert set(probe) == {"accuracy"}  # 5 classes: no top-5
    recipe.main(common + ["--max_train_samples", "200", "--max_test_samples", "100"])  # the same run again
    tuned = recipe.main(
        common
        + ["--finetune", "--epochs", "1", "--max_train_samples", "200", "--max_test_samples", "100"]
        + ["--output_dir", str(tmp_path / "tuned")]
    )
    evaluation, *results = _model_index(folder)
    assert evaluation["task"]["type"] == "image-classification" and evaluation["metrics"][0]["value"] == 0.5
    assert [r["task"]["name"] for r in results] == ["transfer, linear probe", "transfer, fine-tune"]
    assert [r["task"]["type"] for r in results] == ["transfer-linear-probe", "transfer-fine-tune"]
    assert all(r["dataset"]["config"] == "classes=5,6,7,8,9" and len(r["metrics"]) == 1 for r in results)
    assert all(
        r["dataset"]["name"] == "cifar10-subset, classes 5,6,7,8,9 (dog, frog, horse, ship, truck)"
        for r in results
    )
    assert results[0]["metrics"][0]["value"] == pytest.approx(probe["accuracy"], abs=1e-6)
    assert results[1]["metrics"][0]["value"] == pytest.approx(tuned["accuracy"], abs=1e-6)
    assert "CIFAR-10 ResNet-20 (option A)" in (folder / "README.md").read_text()  # the body is kept
    # pretrained features are far above chance (0.2); fine-tuning starts from the probe's head
    assert probe["accuracy"] > 0.6 and tuned["accuracy"] > 0.6
    saved, _ = load_frozen_model(str(tmp_path / "tuned"))
    assert saved.config.num_labels == 5


# -- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input_is_one_line(recipe, capsys, tmp_path, subset_test):
    unlabeled = tmp_path / "unlabeled.parquet"
    subset_test.select(range(8)).remove_columns("label").to_parquet(unlabeled)
    labeled = tmp_path / "single.parquet"
    subset_test.select(range(8)).to_parquet(labeled)
    teacher = str(JPEG_TEACHER_DIR)

    line = recipe_error_line(
        recipe, capsys, ["--model", teacher, "--dataset", str(unlabeled), "--test_split", "train"]
    )
    assert "both 'train'" in line
    line = recipe_error_line(
        recipe,
        capsys,
        [
            "--model",
            teacher,
            "--dataset",
            str(unlabeled),
            "--train_split",
            "train[:4]",
            "--test_split",
            "train[4:]",
        ],
    )
    assert "has no label column" in line and "--label_column" in line
    line = recipe_error_line(recipe, capsys, ["--model", teacher, "--dataset", str(labeled)])
    assert "has no split 'test'" in line and "--test_split" in line
    line = recipe_error_line(
        recipe, capsys, ["--model", teacher, "--dataset", str(SUBSET), "--classes", "3,10"]
    )
    assert "[0, 10)" in line
    line = recipe_error_line(
        recipe, capsys, ["--model", "cifar_resnet20", "--dataset", str(SUBSET), "--update_card"]
    )
    assert "local model folder" in line


def test_a_model_without_a_penultimate_feature_is_one_clear_error(cifar):
    model = _hf_resnet()
    model.head_elsewhere = model.classifier  # a transformers classifier whose head the taps cannot find
    del model.classifier
    split = prepare(cifar, cifar.test, load_frozen_model("cifar_resnet20")[1], False, max_samples=2)
    with pytest.raises(TransferError, match="has no penultimate feature") as e:
        extract_features(model, split.dataset, model_ref="headless")
    assert "\n" not in str(e.value)
    with pytest.raises(TransferError, match="has no penultimate feature"):
        extract_features(torch.nn.Conv2d(3, 3, 1), split.dataset)


def test_transfer_commands_in_the_docs_parse(recipe):
    from transformers import HfArgumentParser

    readme = (REPO / "docs" / "transfer.md").read_text().splitlines()
    cmds = [ln.strip() for ln in readme if ln.strip().startswith("python recipes/transfer.py")]
    assert len(cmds) >= 5
    for cmd in cmds:
        (args,) = HfArgumentParser(recipe.TransferArguments).parse_args_into_dataclasses(
            args=shlex.split(cmd)[2:]
        )
        assert args.model and args.dataset
