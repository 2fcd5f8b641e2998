"""Feature taps: one way to read logits, the penultimate embedding and named intermediate maps from any model.

Three families are supported, each through its own official API rather than module-path hooks:

* the CIFAR zoo (``hf_distill.models.cifar_*``, bare or inside ``CifarForImageClassification``): ``forward_taps``,
  which also gives pre-activation maps; names ``stem``, ``stage1``, ...;
* timm models (bare, or inside transformers' ``TimmWrapperForImageClassification``): ``forward_intermediates`` and
  ``forward_head(pre_logits=True)``; names are the ``feature_info`` module names (``act1``, ``layer1``, ...);
* other transformers image classifiers: ``output_hidden_states=True``; names ``hidden_states.<i>``
  (``hidden_states.0`` is the embedding/stem output); the embedding is the input of the model's classifier.

For all three the first name is the shallowest map, so the map selectors (:data:`hf_distill.features.MapSelector`) mean the same.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import FeatureNeeds, Features


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
