"""Noisy history for long-form training: earlier turns of a session carry imperfect transcripts.

At inference every chunk is transcribed after the model's OWN earlier transcripts, errors included;
trained only on clean references, a model copies the style of its past mistakes and drifts (see
BENCHMARKS.md, 25-minute recording). In a share of the sessions, the transcripts before the last turn
are corrupted the way recognisers err (words dropped, swapped for other words, doubled, a turn cut
short) and carry no loss; the last turn is learnt from its clean reference as usual.
"""

from __future__ import annotations

import random

DROP, SWAP, DOUBLE, CUT = 0.08, 0.10, 0.04, 0.15


def corrupt_transcript(text: str, other_words: list[str], rng: random.Random) -> str:
    """``text`` with recogniser-like errors; ``other_words``: the pool that swapped words come from."""
    words = []
    for word in text.split():
        roll = rng.random()
        if roll < DROP:
            continue
        if roll < DROP + SWAP and other_words:
            word = rng.choice(other_words)
        words.append(word)
        if rng.random() < DOUBLE:
            words.append(word)
    if words and rng.random() < CUT:
        words = words[: rng.randrange(len(words))]
    return " ".join(words)
