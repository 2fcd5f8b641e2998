"""One way to read logits, embeddings and named maps from the zoo, timm and transformers models."""

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

from hf_distill.features import FeatureNeeds
from hf_distill.models.modeling_cifar import create_cifar_model
from hf_distill.models.taps import HFTap, TimmTap, ZooTap, feature_tap, token_grid
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


def test_token_grid_reads_the_patch_grid_else_a_square():
    assert token_grid(65, (32, 32), 4) == (1, 8, 8)  # a class token, 8 x 8 patches
    assert token_grid(7, (32, 48), 16) == (1, 2, 3)  # a non-square image's patch grid
    assert token_grid(64, (256, 256), 4) == (0, 8, 8)  # a merged (Swin) stage: fewer tokens than patches
    assert token_grid(201, (224, 224), None) == (5, 14, 14)  # a class token and 4 registers, no patch size
    with pytest.raises(ValueError, match="no square patch grid"):
        token_grid(117, (32, 32), None)  # 10 x 10 would leave 17 tokens in front
    with pytest.raises(ValueError, match="needs a square image"):
        token_grid(7, (32, 48), None)


def test_transformer_tokens_become_maps_on_their_patch_grid_when_asked():
    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=10,
    )  # fmt: skip
    vit = ViTForImageClassification(cfg).eval()
    tap = feature_tap(vit)
    assert tap.names == ["hidden_states.0", "hidden_states.1", "hidden_states.2"]
    assert tap.model_name == "ViTForImageClassification"
    tokens = tap(vit, X, FeatureNeeds(maps=("hidden_states.2",))).maps["hidden_states.2"]
    maps = tap(vit, X, FeatureNeeds(maps=("hidden_states.2",), token_maps=True)).maps["hidden_states.2"]
    assert tokens.shape == (2, 17, 16) and maps.shape == (2, 16, 4, 4)
    # the class token is dropped; the patch in row 1, column 2 is token 1 + 1 * 4 + 2
    assert torch.equal(maps[:, :, 1, 2], tokens[:, 7])
    assert FeatureNeeds(token_maps=True) | FeatureNeeds(maps=("a",)) == FeatureNeeds(
        maps=("a",), token_maps=True
    )
