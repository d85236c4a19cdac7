"""Blacklist baseline (George, 2020): remove unsafe words and phrases from the prompt before generation.

Matching is case-insensitive and whole-word: ``ass`` never touches ``class``. A phrase's words may be separated
in the prompt by any run of spaces, hyphens or underscores (``blow job`` matches ``Blow-Job``); a trailing
possessive (``nude's``) goes with the word. Nothing else is normalised: plurals must be listed, and obfuscated
spellings (``n*de``, ``nud3``) pass — which is why adversarial prompts defeat this baseline.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import AmsmoothError

SEPARATOR = r"[\s\-_]+"


def default_list_path() -> Path:
    """amsmooth's own short word list (the paper's GPL-3.0 list is read from a user path, never shipped)."""
    return Path(str(resources.files("amsmooth") / "data" / "blacklist" / "default.txt"))


def read_word_list(path: str | Path) -> list[str]:
    """Phrases of a word-list file: one per line; blank lines and lines starting with ``#`` skipped; CRLF ok."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AmsmoothError(f"blacklist file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AmsmoothError(f"cannot read blacklist file {path}: {e}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _phrase_pattern(phrase: str) -> str:
    return SEPARATOR.join(re.escape(w) for w in re.split(SEPARATOR, phrase.strip()) if w)


def tidy(text: str) -> str:
    """Whitespace and punctuation left behind by removals: empty brackets, dangling hyphens, doubled commas."""
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"[(\[{]\s*[)\]}]", " ", text)           # "(nude)" -> "()" -> gone
        text = re.sub(r"(\w)-(?=\s|$|[,.;:!?])", r"\1", text)    # "semi-nude" -> "semi-" -> "semi"
        text = re.sub(r"\s+", " ", text)
        text = re.sub(r"\s+([,.;:!?)\]}])", r"\1", text)         # "a , b" -> "a, b"
        text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)     # "a,, b" / "a, , b" -> "a, b"
        text = re.sub(r"[,;:]\s*([.!?])", r"\1", text)          # "a woman,!" -> "a woman!"
        text = re.sub(r"([(\[{])\s+", r"\1", text)
    text = text.lstrip(" ,;:.!?").rstrip(" ,;:")
    return text if re.search(r"\w", text) else ""


class Blacklist:
    """Removes listed words/phrases from prompts; :meth:`clean` is the defense, :meth:`matches` explains it."""

    def __init__(self, phrases: Iterable[str], source: str = "<list>") -> None:
        self.phrases = sorted({p.strip().lower() for p in phrases if p.strip()}, key=lambda p: (-len(p), p))
        if not self.phrases:
            raise AmsmoothError(f"the blacklist {source} is empty")
        self.source = source
        alternatives = "|".join(_phrase_pattern(p) for p in self.phrases)
        self._regex = re.compile(rf"(?<!\w)(?:{alternatives})(?:['’]s)?(?!\w)", re.IGNORECASE)

    @classmethod
    def from_file(cls, path: str | Path) -> Blacklist:
        return cls(read_word_list(path), source=str(path))

    @classmethod
    def default(cls) -> Blacklist:
        return cls(read_word_list(default_list_path()), source="amsmooth default list")

    def __len__(self) -> int:
        return len(self.phrases)

    def matches(self, prompt: str) -> list[str]:
        """The listed words/phrases found in ``prompt``, as they appear there."""
        return [m.group(0) for m in self._regex.finditer(prompt)]

    def clean(self, prompt: str) -> str:
        """``prompt`` with every listed word/phrase removed and the text tidied; a prompt with no listed word is
        returned byte-identical (tidying is only for what a removal leaves behind)."""
        cleaned, removed = self._regex.subn(" ", prompt)
        return tidy(cleaned) if removed else prompt

    __call__ = clean

    def settings(self) -> dict[str, Any]:
        """What identifies the list in a run's config: source, size and a digest of the phrases."""
        digest = hashlib.sha1("\n".join(self.phrases).encode()).hexdigest()[:12]
        return {"source": self.source, "phrases": len(self.phrases), "sha1": digest}
