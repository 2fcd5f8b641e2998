"""One way to read logits, embeddings and named maps from the zoo, timm and transformers models."""

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification

from hf_distill.features import FeatureNeeds
from hf_distill.models.modeling_cifar import create_cifar_model
from hf_distill.models.taps import HFTap, TimmTap, ZooTap, feature_tap
from tests.helpers import timm_model

X = torch.randn(2, 3, 32, 32)


def _hf_resnet():
    torch.manual_seed(0)
    cfg = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10, image_size=32
    )
    return ResNetForImageClassification(cfg).eval()


@pytest.mark.parametrize(
    "make, cls, first, last",
    [
        (lambda: create_cifar_model("resnet20", num_labels=10).eval(), ZooTap, "stem", "stage3"),
        (lambda: timm_model().eval(), TimmTap, None, None),
        (_hf_resnet, HFTap, "hidden_states.0", "hidden_states.2"),
    ],
)
def test_every_family_gives_logits_embedding_and_named_maps(make, cls, first, last):
    model = make()
    tap = feature_tap(model)
    assert isinstance(tap, cls)
    names = tap.names
    if first is not None:
        assert names[0] == first and names[-1] == last
    req = FeatureNeeds(logits=True, embedding=True, maps=(names[-1], names[0]))
    f = tap(model, X, req)
    with torch.no_grad():
        ref = model(X).logits
    assert torch.allclose(f.logits, ref, atol=1e-5)
    assert f.embedding.ndim == 2 and f.embedding.shape[0] == 2
    assert list(f.maps) == [names[-1], names[0]] and all(m.shape[0] == 2 for m in f.maps.values())
    only = tap(model, X, FeatureNeeds(logits=False, embedding=False, maps=()))
    assert only.logits is None and only.embedding is None and only.maps == {}


def test_zoo_embedding_feeds_the_classifier_and_preact_maps_differ():
    model = create_cifar_model("resnet20", num_labels=10).eval()
    tap = feature_tap(model)
    post = tap(model, X, FeatureNeeds(logits=True, embedding=True, maps=("stage1",)))
    pre = tap(model, X, FeatureNeeds(logits=True, embedding=True, maps=("stage1",), preact=True))
    fc = model.model.get_classifier()
    assert torch.allclose(fc(post.embedding), post.logits, atol=1e-5)
    assert (post.maps["stage1"] >= 0).all() and (pre.maps["stage1"] < 0).any()


def test_a_layer_that_does_not_exist_lists_the_valid_names():
    model = create_cifar_model("resnet20", num_labels=10)
    with pytest.raises(
        ValueError, match=r"'layer3' does not exist in the student .*stem, stage1, stage2, stage3"
    ):
        feature_tap(model).check(FeatureNeeds(maps=("layer3",)), "student")


def test_preact_is_refused_where_unsupported():
    with pytest.raises(ValueError, match="cannot give pre-activation feature maps"):
        feature_tap(timm_model()).check(FeatureNeeds(maps=("layer1",), preact=True), "teacher")
