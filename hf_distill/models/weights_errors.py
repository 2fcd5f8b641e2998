"""Errors of loading a model or a weights file, in one line each (a module of its own so that the loaders and the
akamaster converter share them without importing each other)."""

from __future__ import annotations

import pickle

import safetensors


class ModelLoadError(ValueError):
    """A model name, folder or checkpoint that cannot be loaded; the message says how to fix it."""


#: what reading a damaged, truncated, crafted or foreign weights file raises (torch's tensors-only unpickler refuses
#: anything but tensors with an UnpicklingError; a truncated zip is a RuntimeError; safetensors has its own error)
UNREADABLE_WEIGHTS = (
    pickle.UnpicklingError,
    safetensors.SafetensorError,
    UnicodeDecodeError,
    EOFError,
    RuntimeError,
)


def unreadable_weights(path: str, error: Exception, role: str = "model") -> ModelLoadError:
    """One line for a weights file that cannot be read: which file, why (the error's first line), what to do."""
    if isinstance(
        error, pickle.UnpicklingError
    ):  # its own text suggests turning the safety off: not repeated
        reason = "it holds pickled objects other than tensors, which are never loaded"
    else:
        reason = (str(error).strip().splitlines() or [""])[0][:160]
    return ModelLoadError(
        f"The {role} weights file {path!r} cannot be read ({type(error).__name__}: {reason}): it is truncated, "
        "damaged or not a weights file (a .pt/.pth/.th/.bin file is read as tensors only: no pickled code runs). "
        "Download or save the weights again."
    )


__all__ = ["UNREADABLE_WEIGHTS", "ModelLoadError", "unreadable_weights"]
