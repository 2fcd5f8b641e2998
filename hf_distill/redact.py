"""Keep secrets out of everything a run records or publishes.

A command line is recorded in the output folder's lock and could reach a log or a card; ``TrainingArguments`` is
pickled into ``training_args.bin`` by the Trainer, and upstream uploads that file with the model. So:

* :func:`redact_command` / :func:`redact_text` replace the value of any secret-looking flag (``--hub_token``,
  ``--*password*``, ``--*secret*``, ``--*api_key*``) and any Hub-token-looking string with ``<redacted>``;
* :class:`HiddenToken` is a ``str`` that works as the token inside the process but pickles (``torch.save``) as a
  placeholder, so ``training_args.bin`` never holds it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REDACTED = "<redacted>"
#: a flag whose value is a secret (``--hub_token``, ``--token``, ``--wandb_api_key``, ``--db-password``, ...)
_SECRET_FLAG = re.compile(r"^--?[\w.-]*(token|password|passwd|secret|api[_-]?key)[\w.-]*$", re.IGNORECASE)
#: Hub user access tokens (``hf_`` + 20 or more letters and digits) wherever they appear
_HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
#: ``--flag=value`` with a secret flag
_SECRET_ASSIGNMENT = re.compile(
    r"(--?[\w.-]*(?:token|password|passwd|secret|api[_-]?key)[\w.-]*=)(\S+)", re.IGNORECASE
)


def redact_text(text: str) -> str:
    """``text`` with Hub tokens and the values of ``--secret_flag=value`` pairs replaced by ``<redacted>``."""
    text = _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)
    return _HUB_TOKEN.sub(REDACTED, text)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line's words with every secret replaced: the word after a secret flag (``--hub_token X``), the
    value of ``--secret_flag=X``, and any Hub token elsewhere."""
    out: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if _SECRET_FLAG.match(word):
            hide_next = True
            out.append(word)
            continue
        out.append(redact_text(word))
    return out


def redact_command(argv: Sequence[str]) -> str:
    """:func:`redact_argv` joined with spaces: the command line as the library records it."""
    return " ".join(redact_argv(argv))


class HiddenToken(str):
    """A secret that is itself in memory and a placeholder everywhere it is serialized.

    ``pickle``/``torch.save`` write ``"<redacted>"`` (a plain ``str``), ``repr`` shows the placeholder, and
    ``copy``/``deepcopy`` keep the object itself, so code in this process that reads the value (an upload's
    ``Authorization`` header) still gets the token.
    """

    def __reduce__(self):
        return (str, (REDACTED,))

    def __repr__(self) -> str:
        return repr(REDACTED)

    def __copy__(self) -> HiddenToken:
        return self

    def __deepcopy__(self, memo: dict) -> HiddenToken:
        return self


def hide_token(token: str | None) -> str | None:
    """``token`` as a :class:`HiddenToken` (None stays None)."""
    return None if token is None or isinstance(token, HiddenToken) else HiddenToken(token)


__all__ = ["REDACTED", "HiddenToken", "hide_token", "redact_argv", "redact_command", "redact_text"]
