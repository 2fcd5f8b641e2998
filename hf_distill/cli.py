"""Command-line plumbing shared by every recipe: one log format, and bad input as one readable line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

#: the log line format of every recipe
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


__all__ = ["LOG_FORMAT", "exit_on_bad_input"]
