"""Command-line plumbing shared by the Hub recipes (``recipes/push.py``, ``recipes/evaluate.py``).

args = parse_recipe_args(PushArguments, argv, positional="output_dir")
with exit_on_bad_input(ValueError, FileNotFoundError):
    ...  # a ValueError becomes one "error: ..." line on stderr and exit status 2
"""

from __future__ import annotations

import logging
import sys
from typing import TypeVar

from transformers import HfArgumentParser

from ..console import LOG_FORMAT, exit_on_bad_input

T = TypeVar("T")


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
    # the Hub client logs every retry twice; a failure is reported once, in our own line
    logging.getLogger("huggingface_hub").setLevel(max(log_level, logging.ERROR))
    if positional is not None:
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv and not argv[0].startswith("-"):
            argv = [f"--{positional}", argv[0], *argv[1:]]
    (args,) = HfArgumentParser(arg_class).parse_args_into_dataclasses(args=argv)
    return args


__all__ = ["LOG_FORMAT", "exit_on_bad_input", "parse_recipe_args"]
