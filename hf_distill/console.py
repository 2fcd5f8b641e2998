"""Command-line plumbing shared by every recipe: one log format, and bad input as one readable line."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

#: the log line format of every recipe
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: libraries whose INFO lines (one per Hub request, font cache notes...) are not the user's business
QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "filelock", "matplotlib", "PIL", "fsspec", "huggingface_hub")


def setup_logging(level: int | str = logging.INFO) -> None:
    """Logging as the transformers example scripts set it up: our lines at ``level`` (``--log_level``; a
    non-main process passes WARNING), transformers and datasets at ``level`` too, third-party libraries at WARNING
    at most, and no progress bar for loading or writing weights (training and evaluation keep theirs)."""
    import datasets
    import transformers

    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    logging.basicConfig(format=LOG_FORMAT, level=level)  # a handler once; a second call only sets levels
    logging.getLogger().setLevel(level)
    logging.getLogger("hf_distill").setLevel(level)
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def process_log_level(training_args) -> int:
    """The log level of this process from ``TrainingArguments`` (``--log_level``, ``--log_level_replica``): INFO
    on the main process unless the user asked otherwise."""
    level = training_args.get_process_log_level()
    return logging.INFO if training_args.should_log and training_args.log_level == "passive" else level


@contextlib.contextmanager
def exit_on_bad_input(*errors: type[Exception], traceback: bool = False) -> Iterator[None]:
    """Turn bad input into one readable line, ``error: <message>`` on stderr, and exit status 2 (no traceback); a
    Ctrl-C into ``interrupted: <where and how to resume>`` and exit status 130.

    Any other exception is a bug and keeps its full traceback.

    Args:
        *errors: the exception types that mean bad input (default: ``ValueError``).
        traceback: also print the traceback of a bad-input error (before its one line), to find where it arose.
    """
    caught = errors or (ValueError,)
    try:
        yield
    except KeyboardInterrupt as e:  # Ctrl-C: where the run stopped and how to continue it, not a stack
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except caught as e:
        if traceback:
            import traceback as tb

            tb.print_exc(file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["LOG_FORMAT", "QUIET_LOGGERS", "exit_on_bad_input", "process_log_level", "setup_logging"]
