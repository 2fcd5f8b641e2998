"""Code in a model folder: only hf_distill's own modeling files are published, and only they are called safe.

A published ``.py`` file is code every user runs with ``trust_remote_code=True``. hf_distill writes such files for
its CIFAR-zoo students (``save_pretrained`` copies ``hf_distill/models/modeling_cifar.py`` and what it imports), so a
file is the library's own when it has the name and the exact bytes of one of them. Anything else, a ``.py`` file
or an ``auto_map`` entry pointing at code the library did not write, is foreign: refused unless the publisher says
otherwise, and never advised as safe to run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

#: where the library's own modeling files live (``save_pretrained`` copies them from here)
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


class ForeignCodeError(ValueError):
    """A model folder with code hf_distill did not write."""


@functools.cache
def shipped_code() -> dict[str, str]:
    """The library's own modeling files: file name to sha256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in MODELS_DIR.glob("*.py")}


def is_own_code(path: str | os.PathLike) -> bool:
    """Whether a ``.py`` file is one of the library's own modeling files (same name, same bytes)."""
    p = Path(path)
    return p.is_file() and shipped_code().get(p.name) == hashlib.sha256(p.read_bytes()).hexdigest()


def auto_map_modules(config: dict[str, Any]) -> list[str]:
    """The code an ``auto_map`` loads: ``module.py`` names, or ``repo--module.py`` for code in another repository."""
    out = []
    for value in (config.get("auto_map") or {}).values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if ref:
                out.append(ref.rsplit(".", 1)[0].replace(".", "/") + ".py")
    return list(dict.fromkeys(out))


def _config(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def foreign_code(folder: str | os.PathLike, code_files: list[str] | None = None) -> list[str]:
    """The code in ``folder`` that hf_distill did not write: ``auto_map`` targets that are missing, in another
    repository or not the library's own, and ``.py`` files (``code_files``, default: those at the top) that are not.

    Args:
        folder: the model folder.
        code_files: the ``.py`` files that would be published, relative to ``folder``.

    Returns:
        The offending names, sorted (empty: only the library's own code, or none).
    """
    folder = str(folder)
    if code_files is None:
        code_files = [n for n in os.listdir(folder) if n.endswith(".py")]
    names = set(code_files) | set(auto_map_modules(_config(folder)))
    return sorted(n for n in names if "--" in n or not is_own_code(os.path.join(folder, n)))


def own_remote_code(folder: str | os.PathLike) -> bool:
    """Whether the folder loads with ``trust_remote_code=True`` through the library's own code alone: an
    ``auto_map`` whose every module is one of hf_distill's modeling files."""
    modules = auto_map_modules(_config(str(folder)))
    return bool(modules) and not foreign_code(folder, [])


def check_code(folder: str | os.PathLike, code_files: list[str] | None = None) -> None:
    """Refuse a folder with foreign code (see :func:`foreign_code`).

    Raises:
        ForeignCodeError: the message names the files and the override.
    """
    foreign = foreign_code(folder, code_files)
    if foreign:
        raise ForeignCodeError(
            f"{folder} holds code hf_distill did not write ({', '.join(foreign)}; config.json's auto_map or a .py "
            "file): publishing it would have users run it with trust_remote_code=True. Remove it (and the auto_map "
            "entry), or pass --allow_foreign_code to publish it as your own code."
        )


__all__ = [
    "ForeignCodeError",
    "auto_map_modules",
    "check_code",
    "foreign_code",
    "is_own_code",
    "own_remote_code",
]
