"""User-facing errors: raised at boundaries (loaders, CLI inputs), printed by the CLI as one line."""
from __future__ import annotations


class AmsmoothError(Exception):
    """Bad input or an unavailable resource. The message is one actionable line; the CLI prints it and exits 2."""


def first_line(err: BaseException) -> str:
    """The first non-blank line of ``err``'s message (its type name if it has none), for one-line errors."""
    lines = [s for s in str(err).splitlines() if s.strip()]
    return lines[0] if lines else type(err).__name__
