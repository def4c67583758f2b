"""Long training sessions laid out as inference lays out a long recording.

Utterances drawn at random are joined, with short pauses of faint noise between them, into one
recording of the wanted length; the inference segmenter (``asr.speech.segmenter``) cuts it into
chunks exactly as ``asr transcribe`` would, silence regions are dropped as inference drops them, and
each chunk's transcript is the text of the utterances whose midpoints it holds. A session is the
list of turns that ``training.train_asr.session_batch`` takes: (waveform, transcript, supervised).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from asr.corpus import Utterance
from asr.speech.audio import SAMPLE_RATE
from asr.speech.segmenter import segment
from asr.speech.speech_detector import FrameSpeechDetector, shared_detector


@dataclass(frozen=True)
class LongSessionConfig:
    """minutes: (shortest, longest) session length, drawn uniformly; gap_s: (shortest, longest)
    pause between utterances; noise_db: level of the noise in the pauses (dBFS)."""

    minutes: tuple[float, float] = (10.0, 30.0)
    gap_s: tuple[float, float] = (0.3, 1.5)
    noise_db: float = -65.0


def join_utterances(
    waves: list[np.ndarray], rng: random.Random, config: LongSessionConfig
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One recording from ``waves`` (each [samples] float32) with a pause after each.

    Returns the recording [samples] float32 and each utterance's (start, end) sample span in it.
    """
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    noise_scale = 10 ** (config.noise_db / 20)
    pieces, spans, cursor = [], [], 0
    for wave in waves:
        gap = int(rng.uniform(*config.gap_s) * SAMPLE_RATE)
        pieces += [wave, noise_rng.standard_normal(gap).astype(np.float32) * noise_scale]
        spans.append((cursor, cursor + len(wave)))
        cursor += len(wave) + gap
    return np.concatenate(pieces), spans


def chunk_turns(
    recording: np.ndarray, spans: list[tuple[int, int]], texts: list[str], detector: FrameSpeechDetector
) -> list[tuple[np.ndarray, str, bool]]:
    """Cut ``recording`` as inference does and give each speech chunk the texts of the utterances
    whose midpoints fall in it (in order). Chunks that hold no midpoint are skipped: their audio is
    the edge of an utterance that another chunk transcribes."""
    midpoints = np.array([(start + end) // 2 for start, end in spans])
    turns = []
    for region in segment(recording, detector.probabilities(recording)):
        if region.kind != "speech":
            continue
        inside = np.flatnonzero((midpoints >= region.start) & (midpoints < region.end))
        if len(inside):
            text = " ".join(texts[i] for i in inside)
            turns.append((recording[region.start : region.end], text, True))
    return turns


def long_session(
    utterances: list[Utterance], rng: random.Random, detector: FrameSpeechDetector,
    config: LongSessionConfig = LongSessionConfig()
) -> list[tuple[np.ndarray, str, bool]]:
    """A session of random ``utterances`` lasting ``config.minutes`` (drawn), as inference chunks it."""
    target = rng.uniform(*config.minutes) * 60 * SAMPLE_RATE
    waves, texts, total = [], [], 0
    while total < target:
        utt = rng.choice(utterances)
        wave = utt.load()
        waves.append(wave)
        texts.append(utt.text)
        total += len(wave) + config.gap_s[1] * SAMPLE_RATE / 2
    recording, spans = join_utterances(waves, rng, config)
    return chunk_turns(recording, spans, texts, detector)


class LongSessionStream(IterableDataset):
    """Endless batches of ``batch`` long sessions (``long_session``), as ``training.train_asr``'s
    ``SessionStream`` yields short ones; each loader worker draws with its own seed."""

    def __init__(self, utterances: list[Utterance], config: LongSessionConfig, seed: int, batch: int) -> None:
        self.utterances, self.config, self.seed, self.batch = utterances, config, seed, batch

    def __iter__(self):
        info = get_worker_info()
        rng = random.Random(self.seed + (info.id if info else 0))
        detector = shared_detector()
        while True:
            yield [long_session(self.utterances, rng, detector, self.config) for _ in range(self.batch)]
