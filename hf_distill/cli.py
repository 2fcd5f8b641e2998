"""Command-line plumbing shared by every recipe: one log format, and bad input as one readable line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

#: the log line format of every recipe
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def exit_on_bad_input(*errors: type[Exception]) -> Iterator[None]:
    """Turn bad input into one readable line, ``error: <message>`` on stderr, and exit status 2 (no traceback).

    Args:
        *errors: the exception types that mean bad input (default: ``ValueError``).
    """
    caught = errors or (ValueError,)
    try:
        yield
    except caught as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["LOG_FORMAT", "exit_on_bad_input"]
