"""Which BatchNorm produced a feature map: its affine parameters, for any model a feature tap reads.

OFD (Heo et al., ICCV 2019) sets its margin from the statistics of the teacher's pre-activation features, which
the BatchNorm in front of the activation fixes: its bias (mean) and weight (standard deviation). Models name
their layers every which way (zoo ``stage1``, timm ``layer1``, transformers ``hidden_states.1``), so the BatchNorm
is found by watching one forward pass instead: every module's outputs are recorded in completion order; the
*producer* of a tapped map is the first module that returned that very tensor, and the BatchNorm before the map is
the last BatchNorm, with as many channels as the map, that completed no later than the producer. That is the
map's own BatchNorm where the map is a BatchNorm output (the zoo's pre-activation maps of WRN), and the last
block's final BatchNorm where it is a residual sum or an activation (ResNet stages, timm and transformers stages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

Result = TypeVar("Result")


def _tensors(out: Any) -> Iterable[Tensor]:
    """The tensors in a module's output (a tensor, or nested tuples/lists/dicts/ModelOutputs of them)."""
    if isinstance(out, Tensor):
        yield out
    elif isinstance(out, Mapping):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (tuple, list)):
        for v in out:
            yield from _tensors(v)


def _same(a: Tensor, b: Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


@torch.no_grad()
def batchnorm_before_maps(model: nn.Module, run: Callable[[], Result]) -> tuple[Result, dict[str, nn.Module]]:
    """Run ``run()`` (a forward pass of ``model`` through a feature tap) and find the BatchNorm of each map.

    Args:
        model: the network ``run`` drives (its modules are watched).
        run: a forward pass returning the tap's features (an object whose ``maps`` maps names to (B, C, ...)
            tensors), e.g. ``lambda: tap(model, x, request)``.

    Returns:
        ``(features, found)``: what ``run`` returned, and the BatchNorm module of every map that has one (maps of
        a network without BatchNorm, made by no module, or whose BatchNorm has another channel count, are absent).
    """
    events: list[tuple[nn.Module, list[Tensor]]] = []

    def record(module: nn.Module, args: Any, out: Any) -> None:
        events.append((module, list(_tensors(out))))

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    found: dict[str, nn.Module] = {}
    for name, fmap in result.maps.items():
        producer = next((i for i, (_, outs) in enumerate(events) if any(_same(t, fmap) for t in outs)), None)
        if producer is None or fmap.dim() < 2:
            continue
        for module, _ in reversed(events[: producer + 1]):
            if isinstance(module, _BatchNorm) and module.num_features == fmap.shape[1]:
                found[name] = module
                break
    return result, found


def batchnorm_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """A BatchNorm's (weight, bias) as detached float32 copies (weight 1 / bias 0 when it has no affine part)."""
    c = bn.num_features
    w = bn.weight if getattr(bn, "weight", None) is not None else torch.ones(c)
    b = bn.bias if getattr(bn, "bias", None) is not None else torch.zeros(c)
    return w.detach().float().cpu().clone(), b.detach().float().cpu().clone()


__all__ = ["batchnorm_affine", "batchnorm_before_maps"]
