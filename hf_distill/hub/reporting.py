"""``--report_to`` checked before a run starts: a logger whose package is missing is one line saying what to install.

Upstream builds the logging callbacks inside ``Trainer.__init__``, after the data and the models are loaded, and a
missing TensorBoard is a ``RuntimeError`` traceback there. :func:`check_report_to` runs on the parsed arguments,
first. The TensorBoard logs go up with the model (``runs/``, see :mod:`hf_distill.hub.upload`), where the Hub shows
them.
"""

from __future__ import annotations

from collections.abc import Callable

#: the loggers checked, with the test that their package is there and the command that installs it
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "tensorboard": ("is_tensorboard_available", "pip install tensorboard"),
}


class MissingPackageError(ValueError):
    """A ``--report_to`` logger whose package is not installed."""


def _available(test_name: str) -> Callable[[], bool]:
    from transformers.integrations import integration_utils

    return getattr(integration_utils, test_name)


def check_report_to(report_to: str | list[str] | None) -> None:
    """Refuse a ``--report_to`` logger that cannot run here, before anything is loaded.

    ``all`` and ``none`` are left to upstream (``all`` means the loggers that are installed).

    Args:
        report_to: ``TrainingArguments.report_to``.

    Raises:
        MissingPackageError: the message names the logger and the install command.
    """
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        need = REQUIREMENTS.get(str(name).lower())
        if need is not None and not _available(need[0])():
            raise MissingPackageError(
                f"--report_to {name} needs the {name} package, which is not installed: run `{need[1]}` "
                "(or leave --report_to out)."
            )


__all__ = ["REQUIREMENTS", "MissingPackageError", "check_report_to"]
