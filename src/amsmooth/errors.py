"""User-facing errors: raised at boundaries (loaders, CLI inputs), printed by the CLI as one line."""
from __future__ import annotations


class AmsmoothError(Exception):
    """Bad input or an unavailable resource. The message is one actionable line; the CLI prints it and exits 2."""
