"""English transcript normalisation before scoring (Whisper's normaliser: case, punctuation,
numbers, contractions, spellings), and WER/CER over normalised text."""

from __future__ import annotations

from functools import lru_cache

import jiwer
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer


@lru_cache(maxsize=1)
def _normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer({})


def normalize_english(text: str) -> str:
    """Lower-case words with numbers as digits, no punctuation, contractions expanded."""
    return " ".join(_normalizer()(text).split())


def error_rates(references: list[str], hypotheses: list[str]) -> tuple[float, float]:
    """Corpus WER and CER (fractions) of hypotheses against references, both normalised.

    Pairs whose normalised reference is empty are skipped (nothing to score against).
    """
    pairs = [(normalize_english(r), normalize_english(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        raise ValueError("no non-empty reference to score")
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)
