"""Tentative captions of the open chunk from successive Whisper drafts, LocalAgreement-2 style
(whisper_streaming, Macháček et al. 2023): a word is shown as stable once two successive drafts of
the growing chunk agree on every word up to it; the rest of the newest draft is shown as unstable.

Stable words never shrink while the chunk stays open: a later draft that disagrees earlier on
changes only the unstable tail (the final caption, from the speech LLM, settles the chunk).
"""

from __future__ import annotations

import re

_NOT_WORD = re.compile(r"[^\w']+")


def _key(word: str) -> str:
    """A word as compared across drafts: lowercase, punctuation dropped ("Hale," == "hale")."""
    return _NOT_WORD.sub("", word.lower())


def agreed_length(first: list[str], second: list[str]) -> int:
    """How many leading words two drafts share (compared by ``_key``)."""
    count = 0
    for a, b in zip(first, second):
        if _key(a) != _key(b):
            break
        count += 1
    return count


class LocalAgreement:
    """The tentative caption of one open chunk: ``update(start, draft)`` with each new draft of the
    chunk that starts at sample ``start``; a new ``start`` begins a new chunk."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.previous: list[str] = []  # words of the last draft
        self.stable: list[str] = []  # words two successive drafts agreed on, as first agreed

    def update(self, start: int, draft: str) -> tuple[str, str]:
        """Take the chunk's newest draft; returns (stable text, unstable text after it)."""
        if start != self.start:
            self.start, self.previous, self.stable = start, [], []
        words = draft.split()
        agreed = agreed_length(self.previous, words)
        if agreed > len(self.stable):
            self.stable = words[:agreed]
        self.previous = words
        return " ".join(self.stable), " ".join(words[len(self.stable):])
