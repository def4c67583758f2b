"""The seeded sampler: which text, which voice and which prosody each utterance gets.

Utterance ``index`` depends only on ``(seed, index)``, so a run can stop anywhere and a later run
with the same seed reproduces its prefix exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from training.synth.text_corpus import Corpus
from training.synth.voices import FAMILY_WEIGHTS, Voice, VoiceStyle, sample_style

SOURCE_WEIGHTS = {"fortune": 0.3, "template": 0.2, "man": 0.2, "docs": 0.3}
"""Share of utterances by text kind: quotes and dialogue first, technical prose for vocabulary."""
MULTI_SENTENCE_SHARE = 0.3
"""Share of utterances that read 2-4 neighbouring sentences of one document."""
MAX_MULTI_WORDS = 55
"""Word budget of a multi-sentence utterance: about 20 s at a normal rate, under the 25 s cap."""


@dataclass(frozen=True)
class UtterancePlan:
    """index: position in the run; text: what is spoken and transcribed; source: text source."""

    index: int
    text: str
    source: str
    voice: Voice
    style: VoiceStyle


def source_kind(source: str) -> str:
    family = source.split(":")[0]
    return family if family in ("fortune", "template", "man") else "docs"


class Planner:
    """Draws utterance plans from a corpus and the available voices."""

    def __init__(self, corpus: Corpus, voices: dict[str, list[Voice]], seed: int) -> None:
        self.corpus, self.voices, self.seed = corpus, voices, seed
        self.by_kind: dict[str, list[int]] = {}
        for position, source in enumerate(corpus.sources):
            self.by_kind.setdefault(source_kind(source), []).append(position)
        self.kinds = [k for k in SOURCE_WEIGHTS if k in self.by_kind]
        self.families = [f for f in FAMILY_WEIGHTS if f in voices]

    def plan(self, index: int) -> UtterancePlan:
        rng = random.Random(f"{self.seed}:{index}")
        text, source = self.pick_text(rng)
        family = rng.choices(self.families, [FAMILY_WEIGHTS[f] for f in self.families])[0]
        voice = rng.choice(self.voices[family])
        return UtterancePlan(index, text, source, voice, sample_style(voice, rng))

    def pick_text(self, rng: random.Random) -> tuple[str, str]:
        """(text, source): one sentence or, at ``MULTI_SENTENCE_SHARE``, 2-4 neighbouring ones."""
        kind = rng.choices(self.kinds, [SOURCE_WEIGHTS[k] for k in self.kinds])[0]
        position = rng.choice(self.by_kind[kind])
        sentences = [self.corpus.sentences[position]]
        if rng.random() < MULTI_SENTENCE_SHARE:
            sentences += self._neighbours(position, rng.randint(1, 3))
        return " ".join(sentences), self.corpus.sources[position]

    def _neighbours(self, position: int, count: int) -> list[str]:
        """Up to ``count`` following sentences of the same source, within the word budget."""
        taken, words = [], len(self.corpus.sentences[position].split())
        for following in range(position + 1, min(position + 1 + count, len(self.corpus.sentences))):
            sentence = self.corpus.sentences[following]
            words += len(sentence.split())
            if self.corpus.sources[following] != self.corpus.sources[position] or words > MAX_MULTI_WORDS:
                break
            taken.append(sentence)
        return taken
