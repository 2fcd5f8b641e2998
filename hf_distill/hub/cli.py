"""Command-line plumbing shared by the Hub recipes (``recipes/push.py``, ``recipes/evaluate.py``).

args = parse_recipe_args(PushArguments, argv, positional="output_dir")
with exit_on_bad_input(ValueError, FileNotFoundError):
    ...  # a ValueError becomes one "error: ..." line on stderr and exit status 2
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TypeVar

from transformers import HfArgumentParser

T = TypeVar("T")

#: the log line format of every recipe
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_recipe_args(
    arg_class: type[T],
    argv: list[str] | None = None,
    positional: str | None = None,
    log_level: int = logging.WARNING,
) -> T:
    """Configure logging as the recipes do, then parse the command line into one arguments dataclass.

    Args:
        arg_class: the ``HfArgumentParser`` dataclass.
        argv: the arguments (default: ``sys.argv[1:]``).
        positional: a field that may also be given as the first, positional argument (``--<positional>`` is
            inserted before it).
        log_level: level of the root logger.

    Returns:
        The parsed dataclass.
    """
    logging.basicConfig(format=LOG_FORMAT, level=log_level)
    if positional is not None:
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv and not argv[0].startswith("-"):
            argv = [f"--{positional}", argv[0], *argv[1:]]
    (args,) = HfArgumentParser(arg_class).parse_args_into_dataclasses(args=argv)
    return args


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


__all__ = ["LOG_FORMAT", "exit_on_bad_input", "parse_recipe_args"]
