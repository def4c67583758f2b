"""Cut long audio into chunks at pauses, so no word is split and no second is lost.

Speech is where the speech detector (``asr.speech.speech_detector``: one probability per 32-ms frame)
says so. Every sample of the input lands in exactly one region: a ``speech`` chunk or a ``silence``
region (long stretches without speech, reported and never sent to the model). A stretch of speech
that fits in ``max_chunk_s`` is one chunk; a longer one is cut at its longest pauses, which end
sentences more often than shorter ones: Whisper reads a chunk from one sentence end to another best
(its draft of the dev set as 5-minute recordings: 10.2% WER cut at the longest pause past 6 s, 13.0%
at the first, 14.7% at the first past 10 s, where it drops whole sentences of long chunks). A pause
where the speech on one side is much louder than on the other is always a cut, however short the
chunks: in one window Whisper leaves out a speaker 20-40 dB quieter than its neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asr.speech.speech_detector import FRAME_S, FRAME_SAMPLES


@dataclass(frozen=True)
class SegmenterConfig:
    """threshold / release: a frame starts speech at this probability and speech lasts until one falls
    below ``release`` (Silero's own hysteresis); min_chunk_s / max_chunk_s: the shortest chunk a cut
    may leave (and half of it after the cut) and the longest chunk (Whisper's encoder sees at most
    30 s); min_pause_s: the shortest pause a chunk is cut at; min_silence_s: a stretch without speech
    this long, besides ``speech_pad_s`` kept at each end with the speech (soft onsets, word endings),
    becomes its own region; level_break_db: a pause where the loudest speech frame within
    ``level_window_s`` before it and the loudest within that after it differ by this much is a cut
    whatever the chunk lengths. Whisper base drafting two dev utterances in one window, one of them
    attenuated, kept it in all 10 orderings of 5 pairs at 10 dB and lost it (WER >= 30%) in 1 at
    20 dB, 4 at 30 dB, 8 at 40 dB (BENCHMARKS.md, issue 21 session 13)."""

    threshold: float = 0.5
    release: float = 0.35
    min_chunk_s: float = 6.0
    max_chunk_s: float = 28.0
    min_pause_s: float = 0.3
    min_silence_s: float = 2.0
    speech_pad_s: float = 0.2
    level_break_db: float = 15.0
    level_window_s: float = 2.0


@dataclass(frozen=True)
class Region:
    """start/end in samples; kind: ``speech`` or ``silence``."""

    start: int
    end: int
    kind: str


def frame_energy_db(audio: np.ndarray, frame: int) -> np.ndarray:
    """[ceil(samples / frame)] RMS energy per frame in dBFS."""
    padded = np.pad(audio, (0, -len(audio) % frame))
    rms = np.sqrt(np.mean(padded.reshape(-1, frame).astype(np.float64) ** 2, axis=1))
    return 20 * np.log10(rms + 1e-10)


def speech_frames(probabilities: np.ndarray, config: SegmenterConfig) -> np.ndarray:
    """[frames] bool: speech from ``threshold`` up until a frame falls below ``release``."""
    is_speech = np.zeros(len(probabilities), bool)
    inside = False
    for index, probability in enumerate(probabilities):
        inside = probability >= (config.release if inside else config.threshold)
        is_speech[index] = inside
    return is_speech


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs of equal values: (start, end, value), end exclusive."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(mask)]
    return [(a, b, bool(mask[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def _level_breaks(
    start: int, end: int, is_speech: np.ndarray, energy: np.ndarray, config: SegmenterConfig
) -> list[int]:
    """Frame indices in the middle of the pauses inside the stretch [start, end) (at least
    ``min_pause_s``) where the loudest speech frame within ``level_window_s`` before the pause and the
    loudest after it differ by at least ``level_break_db``: one speaker ends there and a far quieter
    or louder one starts. Each side must hold half ``level_window_s`` of speech: a click or a breath
    next to a pause is no speaker (three dev utterances would start with a 0.3-s chunk of one)."""
    reach = int(config.level_window_s / FRAME_S)
    min_pause = max(1, int(config.min_pause_s / FRAME_S))
    breaks = []
    for a, b, speaking in _runs(is_speech[start:end]):
        a, b = a + start, b + start
        if speaking or b - a < min_pause:
            continue
        before, after = slice(max(start, a - reach), a), slice(b, min(end, b + reach))
        loud_before, loud_after = energy[before][is_speech[before]], energy[after][is_speech[after]]
        if min(len(loud_before), len(loud_after)) >= reach // 2 and (
                abs(loud_before.max() - loud_after.max()) >= config.level_break_db):
            breaks.append((a + b) // 2)
    return breaks


def _cut_speech(
    start: int, end: int, is_speech: np.ndarray, energy: np.ndarray, config: SegmenterConfig
) -> list[int]:
    """Frame indices where the stretch [start, end) is cut into chunks: none while what is left fits in
    ``max_chunk_s``; else in the middle of the longest pause that leaves the chunk at least
    ``min_chunk_s`` long and at least half that after it (a stub of speech left on its own invites
    invented text), or, without such a pause, at the quietest frame of the last third."""
    per_s = 1.0 / FRAME_S
    min_len, max_len = int(config.min_chunk_s * per_s), int(config.max_chunk_s * per_s)
    min_pause = max(1, int(config.min_pause_s * per_s))
    cuts, chunk_start = [], start
    while end - chunk_start > max_len:
        window = slice(chunk_start + min_len, min(chunk_start + max_len, end - min_len // 2))
        pauses = [(a, b) for a, b, v in _runs(is_speech[window]) if not v and b - a >= min_pause]
        if pauses:  # the longest pause (the earliest of equals)
            a, b = max(pauses, key=lambda pause: (pause[1] - pause[0], -pause[0]))
            cut = window.start + (a + b) // 2
        else:
            tail = slice(chunk_start + 2 * max_len // 3, chunk_start + max_len)
            cut = tail.start + int(np.argmin(energy[tail]))
        cuts.append(cut)
        chunk_start = cut
    return cuts


def segment(audio: np.ndarray, probabilities: np.ndarray,
            config: SegmenterConfig = SegmenterConfig()) -> list[Region]:
    """Regions covering ``audio`` ([samples] float32, 16 kHz) end to end, in order; ``probabilities``:
    its speech probability per frame (``SpeechDetector.probabilities``)."""
    if len(audio) == 0:
        return []
    frames = -(-len(audio) // FRAME_SAMPLES)
    if len(probabilities) != frames:
        raise ValueError(f"{len(probabilities)} speech probabilities for {frames} frames of audio")
    energy = frame_energy_db(audio, FRAME_SAMPLES)
    is_speech = speech_frames(probabilities, config)
    pad = int(round(config.speech_pad_s / FRAME_S))
    near_speech = np.convolve(is_speech, np.ones(2 * pad + 1), mode="same") > 0
    min_silence = int(config.min_silence_s / FRAME_S)
    # long stretches far from speech become silence regions; everything else is speech to chunk
    bounds: list[tuple[int, int, str]] = []
    for a, b, near in _runs(near_speech):
        kind = "silence" if not near and (b - a >= min_silence or b - a == frames) else "speech"
        if bounds and bounds[-1][2] == kind:
            bounds[-1] = (bounds[-1][0], b, kind)
        else:
            bounds.append((a, b, kind))
    regions = []
    for a, b, kind in bounds:
        edges = [a, b]
        if kind == "speech":  # cut at level breaks, then what is still too long at its longest pauses
            pieces = [a, *_level_breaks(a, b, is_speech, energy, config), b]
            edges = [a]
            for s, e in zip(pieces[:-1], pieces[1:]):
                edges += [*_cut_speech(s, e, is_speech, energy, config), e]
        for s, e in zip(edges[:-1], edges[1:]):
            start, end = min(s * FRAME_SAMPLES, len(audio)), min(e * FRAME_SAMPLES, len(audio))
            regions.append(Region(start, end, kind))
    return [r for r in regions if r.end > r.start]
