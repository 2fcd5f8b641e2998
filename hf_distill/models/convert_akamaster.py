"""Convert the pretrained CIFAR-10 ResNets of akamaster/pytorch_resnet_cifar10 to zoo / transformers models.

The checkpoints (``resnet20-12fca82f.th`` ...) hold ``{"state_dict": ..., "best_prec1": ...}`` with keys prefixed
``module.`` (DataParallel) and named ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv,bn}{1,2}``, ``linear``. They
map one to one onto the ``resnet<depth>_a`` zoo architectures (option A shortcuts, no weights); the BN
``num_batches_tracked`` counters, absent from these old files, are set to 0.

Command line::

    python -m hf_distill.models.convert_akamaster SRC.th OUT_DIR [--depth 56]

writes a transformers folder (``config.json`` with an ``auto_map``, ``model.safetensors``, the model code) and
copies the LICENSE found beside the checkpoint.
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..console import exit_on_bad_input
from .cifar_common import CIFAR_ARCHITECTURES
from .modeling_cifar import CifarForImageClassification, create_cifar_model
from .weights_errors import UNREADABLE_WEIGHTS, unreadable_weights

CIFAR10_LABELS: list[str] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

_RENAMES: list[tuple[str, str]] = [
    (r"^conv1\.", "model.stem.conv."),
    (r"^bn1\.", "model.stem.bn."),
    (r"^layer([123])\.", r"model.stage\1."),
    (r"^linear\.", "model.fc."),
]


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key  # unknown key: reported as unexpected


def blocks_per_stage(state_dict: Mapping[str, Tensor]) -> int:
    """Number of blocks in the first stage of an akamaster state dict (keys without ``module.``).

    Returns:
        the block count (0 if the dict has no ``layer1`` keys).
    """
    idx = {int(m.group(1)) for k in state_dict if (m := re.match(r"layer1\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


_AKAMASTER_KEY = re.compile(r"^(?:module\.)?(?:conv1|bn1|linear|layer[123]\.\d+\.(?:conv|bn)[12])\.")
_AKAMASTER_REQUIRED = ("conv1.weight", "bn1.weight", "linear.weight", "layer1.0.conv1.weight")


def is_akamaster_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict has the akamaster option-A ResNet layout (``module.`` prefix optional).

    Args:
        state_dict: a flat state dict.

    Returns:
        True if every key is an akamaster name (conv1, bn1, layer<s>.<i>.conv/bn<1|2>, linear) and the
        stem, first block and classifier are present.
    """
    keys = {k[len("module.") :] if k.startswith("module.") else k for k in state_dict}
    return all(k in keys for k in _AKAMASTER_REQUIRED) and all(_AKAMASTER_KEY.match(k) for k in keys)


def read_akamaster_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load an akamaster checkpoint and strip the DataParallel ``module.`` prefix.

    Args:
        path: the ``.th`` file.

    Returns:
        the state dict with the original key names.
    """
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except UNREADABLE_WEIGHTS as e:
        raise unreadable_weights(str(path), e, "akamaster") from e
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (expected a dict with a 'state_dict' entry).")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def _first(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def load_akamaster_checkpoint(path: str | Path, depth: int | None = None) -> CifarForImageClassification:
    """Build a ``CifarForImageClassification`` (``resnet<depth>_a``) holding an akamaster checkpoint.

    Args:
        path: the ``.th`` file (e.g. ``resnet56-4bfd9763.th``).
        depth: 20, 32, 44, 56 or 110; inferred from the number of blocks when None.

    Returns:
        the model in eval mode, with CIFAR-10 class names as ``id2label`` (for 10 outputs).

    Raises:
        ValueError: the checkpoint does not fit the architecture (one sentence naming the architecture, the
            missing / unexpected keys or shape mismatches, and what to pass instead).
    """
    path = Path(path)
    state = read_akamaster_state_dict(path)
    n_blocks = blocks_per_stage(state)
    found_depth = 6 * n_blocks + 2 if n_blocks else None
    if depth is None:
        if found_depth is None:
            raise ValueError(
                f"{path.name} has no 'layer1.<i>' keys, so it is not an akamaster CIFAR ResNet checkpoint; "
                "pass a file such as resnet56-4bfd9763.th."
            )
        depth = found_depth
    arch = f"resnet{depth}_a"
    if arch not in CIFAR_ARCHITECTURES:
        valid = sorted(
            int(a[len("resnet") : -2]) for a in CIFAR_ARCHITECTURES if re.fullmatch(r"resnet\d+_a", a)
        )
        raise ValueError(f"No option-A CIFAR ResNet of depth {depth}; valid depths are {valid}.")
    num_labels = int(state["linear.weight"].shape[0]) if "linear.weight" in state else 10
    id2label = dict(enumerate(CIFAR10_LABELS)) if num_labels == 10 else None
    model = create_cifar_model(arch, num_labels=num_labels, id2label=id2label)

    mapped = {_rename(k): v for k, v in state.items()}
    expected = model.state_dict()
    for key, value in expected.items():  # old checkpoints lack the BN batch counters
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    shapes = [
        f"{k} {tuple(mapped[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches ({_first(shapes)})")
        if found_depth is not None and found_depth != depth:
            advice = (
                f"this checkpoint holds a resnet{found_depth} ({n_blocks} blocks per stage), so load it with "
                f"depth={found_depth} (--teacher cifar_resnet{found_depth}_a)"
            )
        else:
            advice = "check that the file is an akamaster/pytorch_resnet_cifar10 ResNet checkpoint (option A)"
        raise ValueError(
            f"Cannot load {path.name} into cifar_{arch} (depth {depth}, {(depth - 2) // 6} blocks per stage): "
            f"{'; '.join(problems)}; {advice}."
        )
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def convert(src: str | Path, out_dir: str | Path, depth: int | None = None) -> Path:
    """Convert a checkpoint into a transformers folder and copy the LICENSE found beside it.

    Args:
        src: the ``.th`` file.
        out_dir: destination folder (created).
        depth: see :func:`load_akamaster_checkpoint`.

    Returns:
        the output folder.
    """
    src, out_dir = Path(src), Path(out_dir)
    model = load_akamaster_checkpoint(src, depth=depth)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        if (src.parent / name).is_file():
            shutil.copyfile(src.parent / name, out_dir / "LICENSE")
            break
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description="Convert an akamaster/pytorch_resnet_cifar10 checkpoint to a transformers model folder."
    )
    parser.add_argument("src", help="checkpoint file, e.g. resnet56-4bfd9763.th")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--depth", type=int, default=None, help="20/32/44/56/110 (default: inferred)")
    args = parser.parse_args(argv)
    with exit_on_bad_input():
        out = convert(args.src, args.out_dir, depth=args.depth)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
