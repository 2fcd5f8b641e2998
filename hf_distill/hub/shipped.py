"""The files hf_distill needs at run time besides its code: the card template and the ``evaluate`` metric scripts.

They live at the repository's top level (``model_cards/``, ``metrics/``), where people read and edit them. The build
maps them into the package (``hf_distill/_data/model_cards``, ``hf_distill/_data/metrics``; see ``pyproject.toml``),
so an installed wheel has them too. :func:`shipped_path` finds them in either layout.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: Where the build puts the top-level folders inside an installed package.
DATA_ROOT = PACKAGE_ROOT / "_data"
#: The repository root of a source checkout (an editable install, or ``PYTHONPATH`` on a clone).
SOURCE_ROOT = PACKAGE_ROOT.parent


def shipped_path(*parts: str) -> Path:
    """A shipped file or folder, e.g. ``shipped_path("model_cards", "student.md.jinja")``.

    Args:
        *parts: the path below the repository root (first part ``model_cards`` or ``metrics``).

    Returns:
        The path inside the installed package when it is there, else the one in the source checkout.

    Raises:
        FileNotFoundError: neither exists (an install built without its package data).
    """
    for root in (DATA_ROOT, SOURCE_ROOT):
        path = root.joinpath(*parts)
        if path.exists():
            return path
    raise FileNotFoundError(
        f"{'/'.join(parts)} is not in the installed package ({DATA_ROOT}) nor in a source checkout "
        f"({SOURCE_ROOT}): reinstall hf_distill (pip install hf_distill, or pip install -e . in the repository)."
    )


def template_path(name: str = "student.md.jinja") -> Path:
    """The model card template ``model_cards/<name>``."""
    return shipped_path("model_cards", name)


def metrics_dir() -> Path:
    """The folder of the shipped ``evaluate`` metric scripts (``metrics/``)."""
    return shipped_path("metrics")
