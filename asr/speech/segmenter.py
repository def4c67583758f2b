"""Cut long audio into chunks at pauses (frame energy), so no word is split and no second is lost.

Every sample of the input lands in exactly one region: a ``speech`` chunk (at most
``max_chunk_s`` long, cut at the deepest pause near its end) or a ``silence`` region (long
stretches below the speech threshold, reported and never sent to the model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegmenterConfig:
    """frame_s: energy frame length; min_chunk_s / max_chunk_s: preferred and hard bounds of a chunk
    (Whisper's encoder sees at most 30 s); min_pause_s: a pause this long ends a chunk once it is
    longer than min_chunk_s, unless less than half of min_chunk_s would be left after it (a stub
    of trailing speech stays with its chunk rather than going to the model on its own, where a
    fraction of a second invites invented text); min_silence_s: silence this long becomes its own
    region;
    speech_margin_db: frames this far above the noise floor count as speech; loud_db: frames
    above this (dBFS) count as speech whatever the floor (continuous speech has no quiet
    frames to estimate a floor from); floor_db: energy below this is silence whatever the floor."""

    frame_s: float = 0.02
    min_chunk_s: float = 6.0
    max_chunk_s: float = 28.0
    min_pause_s: float = 0.3
    min_silence_s: float = 2.0
    speech_margin_db: float = 12.0
    loud_db: float = -40.0
    floor_db: float = -55.0


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


def speech_frames(energy_db: np.ndarray, config: SegmenterConfig) -> np.ndarray:
    """[frames] bool: louder than the noise floor (10th percentile) by the margin or louder than
    loud_db, and above floor_db."""
    noise_floor = np.percentile(energy_db, 10)
    threshold = max(min(noise_floor + config.speech_margin_db, config.loud_db), config.floor_db)
    return energy_db > threshold


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs of equal values: (start, end, value), end exclusive."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(mask)]
    return [(a, b, bool(mask[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def _cut_speech(
    start: int, end: int, is_speech: np.ndarray, energy: np.ndarray, config: SegmenterConfig
) -> list[int]:
    """Frame indices where the stretch [start, end) is cut into chunks."""
    per_s = 1.0 / config.frame_s
    min_len, max_len = int(config.min_chunk_s * per_s), int(config.max_chunk_s * per_s)
    min_pause = max(1, int(config.min_pause_s * per_s))
    cuts, chunk_start = [], start
    while end - chunk_start > min_len:
        window = slice(chunk_start + min_len, min(chunk_start + max_len, end))
        pauses = [(a, b) for a, b, v in _runs(is_speech[window]) if not v and b - a >= min_pause]
        if pauses:  # first long-enough pause after min_len: cut in its middle
            a, b = pauses[0]
            cut = window.start + (a + b) // 2
        elif end - chunk_start > max_len:  # no pause: cut at the quietest frame of the last third
            tail = slice(chunk_start + 2 * max_len // 3, chunk_start + max_len)
            cut = tail.start + int(np.argmin(energy[tail]))
        else:
            break
        if end - cut < min_len // 2 and end - chunk_start <= max_len:  # a short stub left: keep it
            break
        cuts.append(cut)
        chunk_start = cut
    return cuts


def segment(audio: np.ndarray, sample_rate: int, config: SegmenterConfig = SegmenterConfig()) -> list[Region]:
    """Regions covering ``audio`` ([samples] float32) end to end, in order."""
    if len(audio) == 0:
        return []
    frame = max(1, int(config.frame_s * sample_rate))
    energy = frame_energy_db(audio, frame)
    is_speech = speech_frames(energy, config)
    min_silence = int(config.min_silence_s / config.frame_s)
    # long silent runs become silence regions; everything else is speech to chunk
    bounds: list[tuple[int, int, str]] = []
    for a, b, loud in _runs(is_speech):
        kind = "silence" if not loud and b - a >= min_silence else "speech"
        if bounds and bounds[-1][2] == kind:
            bounds[-1] = (bounds[-1][0], b, kind)
        else:
            bounds.append((a, b, kind))
    regions = []
    for a, b, kind in bounds:
        edges = [a, *(_cut_speech(a, b, is_speech, energy, config) if kind == "speech" else []), b]
        for s, e in zip(edges[:-1], edges[1:]):
            regions.append(Region(min(s * frame, len(audio)), min(e * frame, len(audio)), kind))
    return [r for r in regions if r.end > r.start]
