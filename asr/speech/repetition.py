"""Repetition-loop detection for generated transcripts (the failure long-form users hate most)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoopConfig:
    """max_ngram: longest repeating unit looked for, in tokens; min_repeats: consecutive copies of
    a unit of 2+ tokens that make a loop; min_single_repeats: copies of a single token that do
    (``no no no`` is speech, sixteen of them are not); tokens_per_second / extra_tokens: a chunk
    whose transcript outgrows ``seconds * tokens_per_second + extra_tokens`` is runaway output
    (fast speech is about 4 words, 5-6 tokens, per second)."""

    max_ngram: int = 24
    min_repeats: int = 4
    min_single_repeats: int = 12
    tokens_per_second: float = 10.0
    extra_tokens: int = 24


def loop_start(tokens: list[int], config: LoopConfig = LoopConfig()) -> int | None:
    """If ``tokens`` ends in a loop, the index where its second copy starts (keep ``tokens[:i]``:
    one copy survives); else None."""
    n = len(tokens)
    for size in range(1, config.max_ngram + 1):
        needed = config.min_single_repeats if size == 1 else config.min_repeats
        if size * needed > n:
            break
        unit = tokens[n - size :]
        copies = 1
        while (copies + 1) * size <= n and tokens[n - (copies + 1) * size : n - copies * size] == unit:
            copies += 1
        if copies >= needed:
            return n - (copies - 1) * size
    return None


def token_budget(seconds: float, config: LoopConfig = LoopConfig()) -> int:
    """Most tokens a transcript of ``seconds`` of audio may take before it counts as runaway."""
    return int(seconds * config.tokens_per_second) + config.extra_tokens
