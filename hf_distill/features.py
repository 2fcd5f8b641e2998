"""The types shared by the models (which produce features) and the distillation methods (which consume them).

Neutral ground between :mod:`hf_distill.models` and :mod:`hf_distill.methods`: the models' feature taps
(:mod:`hf_distill.models.taps`) fill :class:`Features` as asked by a :class:`FeatureNeeds`; the methods declare
:class:`FeatureNeeds` and build their parts from a :class:`FeatureSpec`. Models never import losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from torch import Tensor

# A map selector names which intermediate feature maps a method wants. Resolved against the names a model offers
# (zoo: "stem", "stage1", ...; timm: feature_info module names; HF: "hidden_states.<i>"):
#   "stages" -> every map after the stem (RepDistiller's feat[1:-1])
#   "last"   -> the deepest map (feat[-2])
#   "all"    -> stem and every stage (feat[:-1])
#   "auto"   -> the layers paired with the other network's by depth and spatial size (hf_distill.methods.pairing)
#   an int   -> that position in the list (negative counts from the end)
#   any other string -> that exact layer name
MapSelector = str | int

#: the selector of automatic layer pairing (docs/any_pair.md)
AUTO = "auto"


@dataclass(frozen=True)
class FeatureNeeds:
    """What to read from one network: what a method declares, and what a feature tap is asked to extract.

    A method's ``maps`` are selectors; the trainer resolves them against the network's layer names
    (:meth:`with_maps`) before asking the network's tap, so a tap only ever sees concrete layer names.

    Args:
        logits: the class scores.
        embedding: the penultimate (pooled, flattened) vector that feeds the classifier.
        maps: selectors of intermediate feature maps (see ``MapSelector``).
        preact: take the maps before their final activation (AB, OFD, ReviewKD's teacher; zoo models support it).
        batchnorm: read the affine parameters of the BatchNorm in front of each map (OFD's margin), into
            ``FeatureSpec.batchnorm``.
        token_maps: lay transformer tokens (B, N, D) out as (B, D, h, w) maps on their patch grid, the class and
            register tokens dropped (what the methods that compare maps need; timm ViTs give such maps already).
    """

    logits: bool = False
    embedding: bool = False
    maps: tuple[MapSelector, ...] = ()
    preact: bool = False
    batchnorm: bool = False
    token_maps: bool = False

    def __or__(self, other: FeatureNeeds) -> FeatureNeeds:
        maps = tuple(dict.fromkeys(self.maps + other.maps))
        return FeatureNeeds(
            logits=self.logits or other.logits,
            embedding=self.embedding or other.embedding,
            maps=maps,
            preact=self.preact or other.preact,
            batchnorm=self.batchnorm or other.batchnorm,
            token_maps=self.token_maps or other.token_maps,
        )

    @property
    def anything(self) -> bool:
        return self.logits or self.embedding or bool(self.maps)

    def with_maps(self, layers: Sequence[str]) -> FeatureNeeds:
        """The same request with ``maps`` replaced by resolved layer names."""
        return replace(self, maps=tuple(layers))


@dataclass
class Features:
    """What one network produced for one batch.

    Args:
        logits: (B, num_classes) or None.
        embedding: (B, D) penultimate vector or None.
        maps: layer name -> (B, C, H, W) map (or (B, N, D) tokens for transformers), in depth order.
    """

    logits: Tensor | None = None
    embedding: Tensor | None = None
    maps: dict[str, Tensor] = field(default_factory=dict)

    def map_list(self, names: Sequence[str]) -> list[Tensor]:
        return [self.maps[n] for n in names]

    def detach(self) -> Features:
        return Features(
            logits=None if self.logits is None else self.logits.detach(),
            embedding=None if self.embedding is None else self.embedding.detach(),
            maps={k: v.detach() for k, v in self.maps.items()},
        )

    def float(self) -> Features:
        """Float32 copy: loss math (softmax with temperature, cosines, NCE) is unstable in half precision."""

        def f(t: Tensor | None) -> Tensor | None:
            return t.float() if t is not None and t.is_floating_point() else t

        return Features(
            logits=f(self.logits), embedding=f(self.embedding), maps={k: f(v) for k, v in self.maps.items()}
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Shapes (without the batch dimension) that one network produces, seen on the dry run.

    Args:
        names: every map name the network offers, shallow to deep.
        maps: shape of each map the methods asked for.
        logits: shape of the logits, e.g. ``(100,)``.
        embedding: shape of the penultimate vector, e.g. ``(64,)``.
        batchnorm: ``(weight, bias)`` (each (C,)) of the BatchNorm in front of every requested map that has one,
            when a method asked for them (``FeatureNeeds.batchnorm``).
        model: the network's class name, for messages (``"ResNet"``, ``"ViTForImageClassification"``).
        input_size: (H, W) of the images the network saw on the dry run: a map's stride is this over its size.
        preact_maps: whether the network can give pre-activation maps (``FeatureNeeds.preact``).
    """

    names: tuple[str, ...]
    maps: dict[str, tuple[int, ...]] = field(default_factory=dict)
    logits: tuple[int, ...] | None = None
    embedding: tuple[int, ...] | None = None
    batchnorm: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    model: str = ""
    input_size: tuple[int, int] | None = None
    preact_maps: bool = False

    def describe(self, who: str) -> str:
        """``"the student (ResNet)"``: how messages name this network."""
        return f"the {who} ({self.model})" if self.model else f"the {who}"

    def layer(self, who: str, name: str) -> str:
        """``"the teacher's layer 'layer2' (ResNet)"``: how messages name one of its layers."""
        return f"the {who}'s layer {name!r}" + (f" ({self.model})" if self.model else "")


#: Only the class scores: what evaluation and teacher-accuracy passes ask of a network.
LOGITS_ONLY = FeatureNeeds(logits=True)

__all__ = ["AUTO", "LOGITS_ONLY", "FeatureNeeds", "FeatureSpec", "Features", "MapSelector"]
