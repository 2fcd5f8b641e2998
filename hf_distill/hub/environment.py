"""The machine a run trained on, as a card states it: the accelerator (never the host's name) and the versions of
the libraries involved."""

from __future__ import annotations

import os
import platform
from typing import Any


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware(args: Any) -> tuple[str, int]:
    """``("GPU: <name>", processes)`` or ``("CPU (<n> cores): <model>", processes)`` from TrainingArguments."""
    import torch

    device = getattr(args, "device", None)
    dtype = getattr(device, "type", str(device) if device is not None else "cpu")
    if dtype == "cuda" and torch.cuda.is_available():
        name, kind = torch.cuda.get_device_name(device), "GPU"
    elif dtype == "mps":
        name, kind = "Apple MPS", "GPU"
    elif dtype == "xpu":
        name, kind = "Intel XPU", "GPU"
    else:
        name, kind = _cpu_name(), f"CPU ({os.cpu_count()} cores)"
    return f"{kind}: {name}", int(getattr(args, "world_size", 1) or 1)


def framework_versions() -> dict[str, str]:
    """The installed versions of hf_distill and the libraries a published student depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("hf_distill", "transformers", "torch", "timm", "datasets", "accelerate", "huggingface_hub"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


__all__ = ["framework_versions", "hardware"]
