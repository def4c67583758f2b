"""Synthesis speed per engine family: real-time factor on a fixed set of corpus sentences."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from tqdm import tqdm

from training.synth.synthesize import SAMPLE_RATE, synthesize
from training.synth.text_corpus import Corpus
from training.synth.voices import Voice, VoiceStyle


@dataclass(frozen=True)
class FamilySpeed:
    """audio_seconds: speech produced; compute_seconds: wall time on one process; rtf: their ratio."""

    family: str
    voices: int
    audio_seconds: float
    compute_seconds: float

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.audio_seconds


def benchmark_families(corpus: Corpus, voices: dict[str, list[Voice]], sentences: int = 12,
                       seed: int = 0) -> list[FamilySpeed]:
    """Each family speaks the same ``sentences`` sentences (round-robin over its voices, default style);
    the first utterance per family warms the engine up and is not timed."""
    rng = random.Random(seed)
    texts = rng.sample(corpus.sentences, sentences + 1)
    speeds = []
    for family, family_voices in voices.items():
        synthesize(texts[0], family_voices[0], VoiceStyle())
        audio = compute = 0.0
        for number, text in enumerate(tqdm(texts[1:], desc=family, leave=False)):
            start = time.perf_counter()
            wave = synthesize(text, family_voices[number % len(family_voices)], VoiceStyle())
            compute += time.perf_counter() - start
            audio += len(wave) / SAMPLE_RATE
        speeds.append(FamilySpeed(family, len(family_voices), audio, compute))
    return speeds
