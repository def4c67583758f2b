"""Repetition-loop detection for generated transcripts (the failure long-form users hate most)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class LoopConfig:
    """max_ngram: longest repeating unit looked for, in tokens (a whole repeated sentence);
    min_repeats: consecutive copies of a unit of 2+ tokens that make a loop; min_single_repeats:
    copies of a single token that do (``no no no`` is speech, sixteen of them are not);
    tokens_per_second / extra_tokens: a chunk whose transcript outgrows ``seconds *
    tokens_per_second + extra_tokens`` is runaway output (fast speech is about 4 words, 5-6 tokens,
    per second); max_compression_ratio: a transcript whose text compresses better than this is a
    loop (2.4, as Whisper and faster-whisper)."""

    max_ngram: int = 64
    min_repeats: int = 4
    min_single_repeats: int = 12
    tokens_per_second: float = 10.0
    extra_tokens: int = 24
    max_compression_ratio: float = 2.4


def loop_start(tokens: list[int], config: LoopConfig = LoopConfig()) -> int | None:
    """If ``tokens`` ends in a loop, the index where its second copy starts (keep ``tokens[:i]``:
    one copy survives); else None. The tail only has to repeat with the unit's period, and half a
    copy of slack is allowed: the last copy may be cut short (generation stopped at its token
    budget) and the first may start differently (the tokenizer merges a unit's first token with
    what precedes it)."""
    n = len(tokens)
    for size in range(1, config.max_ngram + 1):
        needed = config.min_single_repeats if size == 1 else config.min_repeats
        if size * needed > n:
            break
        periodic = 0  # tail positions equal to the token one unit earlier
        while periodic < n - size and tokens[n - 1 - periodic] == tokens[n - 1 - periodic - size]:
            periodic += 1
        if 2 * (periodic + size) >= (2 * needed - 1) * size:
            return n - periodic
    return None


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression (Whisper's repetitiveness measure)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def repetitive(text: str, config: LoopConfig = LoopConfig()) -> bool:
    """True for a transcript that compresses like a loop even where no exact loop ends it (copies
    that vary in punctuation, a loop in the middle)."""
    return compression_ratio(text) > config.max_compression_ratio


def token_budget(seconds: float, config: LoopConfig = LoopConfig()) -> int:
    """Most tokens a transcript of ``seconds`` of audio may take before it counts as runaway."""
    return int(seconds * config.tokens_per_second) + config.extra_tokens
