"""Feature taps: one way to read logits, the penultimate embedding and named intermediate maps from any model.

Three families are supported, each through its own official API rather than module-path hooks:

* the CIFAR zoo (``hf_distill.models.cifar_*``, bare or inside ``CifarForImageClassification``): ``forward_taps``,
  which also gives pre-activation maps; names ``stem``, ``stage1``, ...;
* timm models (bare, or inside transformers' ``TimmWrapperForImageClassification``): ``forward_intermediates`` and
  ``forward_head(pre_logits=True)``; names are the ``feature_info`` module names (``act1``, ``layer1``, ...);
* other transformers image classifiers: ``output_hidden_states=True``; names ``hidden_states.<i>``
  (``hidden_states.0`` is the embedding/stem output); the embedding is the input of the model's classifier. A
  vision transformer's hidden states are tokens (B, N, D); asked for ``token_maps`` the tap lays them out as
  (B, D, h, w) maps on the patch grid (:func:`token_grid`), as timm's ``forward_intermediates`` does for its ViTs.

For all three the first name is the shallowest map, so the map selectors (:data:`hf_distill.features.MapSelector`) mean the same.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..features import FeatureNeeds, Features

#: the most tokens in front of the patches (class, distillation and register tokens) a token grid may have
MAX_PREFIX_TOKENS = 16


def token_grid(num_tokens: int, image_size: tuple[int, int], patch_size: int | None) -> tuple[int, int, int]:
    """Where the patches are among a transformer layer's N tokens: ``(prefix, h, w)``, the patches being the last
    ``h * w`` tokens in row-major order after ``prefix`` class/distillation/register tokens.

    With the model's patch size the grid is the image's patch grid (``H // p`` by ``W // p``, square or not). A
    layer with fewer tokens than that (a hierarchical transformer's merged stages, e.g. Swin) or a model that reports
    no patch size is read as a square grid: the largest square of tokens, the rest in front.

    Args:
        num_tokens: N.
        image_size: (H, W) of the input image.
        patch_size: the model's patch size, or None.

    Returns:
        ``(prefix, h, w)``.

    Raises:
        ValueError: the tokens form no grid (a square one, where the patch grid does not apply) with at most
            :data:`MAX_PREFIX_TOKENS` tokens in front; the message says which and why (the caller adds the layer).
    """
    height, width = image_size
    if patch_size:
        h, w = height // patch_size, width // patch_size
        if 0 <= num_tokens - h * w <= MAX_PREFIX_TOKENS:
            return num_tokens - h * w, h, w
    side = math.isqrt(num_tokens)
    if height != width:
        raise ValueError(
            f"{num_tokens} tokens from a {height}x{width} image form no patch grid the model reports (patch size "
            f"{patch_size}), and a square grid needs a square image"
        )
    if side == 0 or num_tokens - side * side > MAX_PREFIX_TOKENS:
        raise ValueError(
            f"{num_tokens} tokens form no square patch grid (with at most {MAX_PREFIX_TOKENS} class/register "
            "tokens in front)"
        )
    return num_tokens - side * side, side, side


def tokens_as_map(tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """(B, N, D) tokens as a (B, D, h, w) map on the grid ``(prefix, h, w)`` of :func:`token_grid`."""
    prefix, h, w = grid
    patches = tokens[:, prefix:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class FeatureTap:
    """Reads :class:`~hf_distill.features.Features` from a model. Stateless apart from the layer names."""

    family = "generic"
    supports_preact = False

    def __init__(self, model: nn.Module) -> None:
        self._names: list[str] | None = None
        self._model_name = type(model).__name__

    @property
    def names(self) -> list[str]:
        raise NotImplementedError

    @property
    def model_name(self) -> str:
        """The class name of the network read (the timm module inside a transformers wrapper), for messages."""
        return self._model_name

    def check(self, request: FeatureNeeds, who: str = "model") -> None:
        """Raise a clear error if ``request`` asks for something this model cannot give."""
        missing = [n for n in request.maps if n not in self.names]
        if missing:
            raise ValueError(
                f"Feature layer {missing[0]!r} does not exist in the {who} ({self._model_name}). "
                f"Valid layer names: {', '.join(self.names)}."
            )
        if request.preact and request.maps and not self.supports_preact:
            raise ValueError(
                f"The {who} ({self._model_name}, a {self.family} model) cannot give pre-activation feature maps, "
                "which the chosen method needs (AB; OFD and ReviewKD by default). Use a CIFAR-zoo model (cifar_*), "
                "set --ofd-student-preact / --ofd-teacher-preact / --reviewkd-teacher-preact false, or use another "
                "method."
            )

    def __call__(self, model: nn.Module, pixel_values: Tensor, request: FeatureNeeds) -> Features:
        raise NotImplementedError


def _core(model: nn.Module) -> nn.Module:
    """Strip DDP/compile wrappers."""
    while True:
        if (
            hasattr(model, "module")
            and isinstance(model.module, nn.Module)
            and not hasattr(model, "forward_taps")
        ):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class ZooTap(FeatureTap):
    """CIFAR zoo: ``forward_taps(x, preact)`` returns every map, the embedding and the logits in one pass."""

    family = "CIFAR-zoo"
    supports_preact = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._names = list(_core(model).feature_names)

    @property
    def names(self) -> list[str]:
        return self._names

    def __call__(self, model: nn.Module, pixel_values: Tensor, request: FeatureNeeds) -> Features:
        maps, emb, logits = _core(model).forward_taps(pixel_values, preact=request.preact)
        return Features(
            logits=logits if request.logits else None,
            embedding=emb if request.embedding else None,
            maps={n: maps[n] for n in request.maps},
        )


def _timm_model(model: nn.Module) -> nn.Module:
    model = _core(model)
    return model.timm_model if hasattr(model, "timm_model") else model


class TimmTap(FeatureTap):
    """timm models: ``forward_intermediates`` for maps, ``forward_head`` for embedding and logits."""

    family = "timm"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        tm = _timm_model(model)
        self._names = [str(f["module"]) for f in tm.feature_info]
        self._model_name = type(tm).__name__

    @property
    def names(self) -> list[str]:
        return self._names

    def __call__(self, model: nn.Module, pixel_values: Tensor, request: FeatureNeeds) -> Features:
        tm = _timm_model(model)
        maps: dict[str, Tensor] = {}
        if request.maps:
            idx = [self._names.index(n) for n in request.maps]
            final, inter = tm.forward_intermediates(pixel_values, indices=sorted(set(idx)))
            by_idx = dict(zip(sorted(set(idx)), inter))
            maps = {n: by_idx[i] for n, i in zip(request.maps, idx)}
        else:
            final = tm.forward_features(pixel_values)
        emb = tm.forward_head(final, pre_logits=True) if request.embedding else None
        logits = tm.forward_head(final) if request.logits else None
        return Features(logits=logits, embedding=emb, maps=maps)


class HFTap(FeatureTap):
    """transformers image classifiers: ``output_hidden_states`` for maps, the classifier's input as embedding."""

    family = "transformers"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._model_ref = model

    @property
    def names(self) -> list[str]:
        if self._names is None:
            # The number of hidden states is only known from a forward pass; probe once on a tiny input.
            m = _core(self._model_ref)
            size = getattr(m.config, "image_size", 224)
            size = size if isinstance(size, int) else int(size[0]) if isinstance(size, (list, tuple)) else 224
            chans = getattr(m.config, "num_channels", 3)
            p = next(m.parameters())
            was_training = m.training
            m.eval()
            with torch.no_grad():
                out = m(
                    torch.zeros(1, chans, size, size, device=p.device, dtype=p.dtype),
                    output_hidden_states=True,
                )
            m.train(was_training)
            hs = getattr(out, "hidden_states", None)
            if not hs:
                raise ValueError(
                    f"{type(m).__name__} returns no hidden_states; it cannot provide feature maps."
                )
            self._names = [f"hidden_states.{i}" for i in range(len(hs))]
            self._model_ref = None  # do not keep the model alive through the tap
        return self._names

    @staticmethod
    def _classifier(m: nn.Module) -> nn.Module:
        for attr in ("classifier", "fc", "head"):
            c = getattr(m, attr, None)
            if isinstance(c, nn.Module):
                return c
        raise ValueError(
            f"Cannot find the classifier of {type(m).__name__} (looked for .classifier/.fc/.head); "
            "its penultimate embedding cannot be read."
        )

    @staticmethod
    def _patch_size(m: nn.Module) -> int | None:
        p = getattr(getattr(m, "config", None), "patch_size", None)
        p = p[0] if isinstance(p, (list, tuple)) else p
        return int(p) if isinstance(p, int) and p > 0 else None

    def _as_map(self, m: nn.Module, name: str, tokens: Tensor, image: Tensor) -> Tensor:
        """A token layer (B, N, D) laid out as a map; a map or a vector is returned as it is."""
        if tokens.dim() != 3:
            return tokens
        try:
            grid = token_grid(tokens.shape[1], tuple(image.shape[-2:]), self._patch_size(m))
        except ValueError as e:
            raise ValueError(
                f"The layer {name!r} of {type(m).__name__} gives transformer tokens that cannot be laid out as a map: "
                f"{e}. Name layers that give maps, or use a method on embeddings (kd, cc, rkd, pkt, crd)."
            ) from None
        return tokens_as_map(tokens, grid)

    def __call__(self, model: nn.Module, pixel_values: Tensor, request: FeatureNeeds) -> Features:
        m = _core(model)
        captured: list[Tensor] = []
        handle = None
        if request.embedding:
            handle = self._classifier(m).register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
        try:
            out = m(pixel_values, output_hidden_states=bool(request.maps))
        finally:
            if handle is not None:
                handle.remove()
        maps = {}
        if request.maps:
            hs = out.hidden_states
            maps = {n: hs[int(n.rsplit(".", 1)[1])] for n in request.maps}
            if request.token_maps:
                maps = {n: self._as_map(m, n, t, pixel_values) for n, t in maps.items()}
        emb = captured[0].flatten(1) if captured else None
        return Features(logits=out.logits if request.logits else None, embedding=emb, maps=maps)


def feature_tap(model: nn.Module) -> FeatureTap:
    """Pick the tap for ``model`` (zoo, timm or transformers)."""
    core = _core(model)
    if hasattr(core, "forward_taps"):
        return ZooTap(core)
    tm = _timm_model(core)
    if hasattr(tm, "forward_intermediates") and hasattr(tm, "feature_info"):
        return TimmTap(core)
    if hasattr(core, "config") and hasattr(core, "forward"):
        return HFTap(core)
    raise TypeError(
        f"{type(core).__name__} is neither a CIFAR-zoo, a timm nor a transformers image-classification model; "
        "hf_distill cannot read its features."
    )
