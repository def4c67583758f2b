"""Cut a live audio stream at pauses as it arrives (the streaming counterpart of
``asr.speech.segmenter``, which sees a whole file).

Frame energy against an adaptive noise floor marks speech. A chunk opens at the first speech frame
(with a short pre-roll) and closes at the first pause long enough: a long one while it holds a
word or two, a shorter one (the end of an utterance) then, a short one once the chunk is
``min_chunk_s`` long, a gap between words once it is ``long_chunk_s`` long. A chunk that reaches
``max_chunk_s`` without a pause is cut at its quietest frame in the last third, never mid-word
where a quieter frame exists. Silence between chunks is never kept, so memory stays bounded by
``max_chunk_s`` of audio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from asr.speech.audio import SAMPLE_RATE
from asr.speech.segmenter import SegmenterConfig, frame_energy_db

_FILE = SegmenterConfig()  # the file segmenter's pause and chunk bounds


@dataclass(frozen=True)
class StreamSegmenterConfig:
    """frame_s: energy frame; min_chunk_s: after this a ``min_pause_s`` pause ends a chunk;
    end_pause_s: a pause this long ends a chunk of any length (the end of an utterance: captions
    should not wait for the chunk to grow) but a short one; short_chunk_s / short_pause_s: a chunk
    of less speech than this needs this long a pause (Whisper reads a word or two alone badly: on
    the dev set the live finals of utterances cut into pieces under 2.5 s lost 5 points of WER
    against the same utterances whole; at 1 s, live finals 11.20 -> 10.42%, BENCHMARKS.md session 15);
    long_chunk_s / long_pause_s: past this length a
    shorter gap between words ends the chunk (a final caption comes every few seconds even in
    fluent reading; the gap is still silence, never inside a word); max_chunk_s: forced cut
    (Whisper sees 30 s);
    preroll_s / tail_s: quiet audio kept before the first and after the last speech frame
    (soft onsets and word endings); min_speech_s: chunks with less speech than this (a click)
    are dropped; floor_window_s: history the noise floor (10th percentile) is taken over;
    speech_margin_db: frames this far above the noise floor count as speech; loud_db: frames above
    this (dBFS) count as speech whatever the floor (continuous speech has no quiet frames to estimate
    a floor from); floor_db: energy below this is silence whatever the floor: near digital silence
    only, as a quiet recording's speech sits at -60 to -70 dBFS over a floor near -85 (at -55, a
    quarter of the dev set's FLEURS utterances lost most of their words and three lost all, live
    finals WER 16.95% -> 11.20%: BENCHMARKS.md, session 15)."""

    frame_s: float = 0.02
    min_chunk_s: float = 4.0
    min_pause_s: float = _FILE.min_pause_s
    end_pause_s: float = 0.5
    short_chunk_s: float = 2.5
    short_pause_s: float = 1.0
    long_chunk_s: float = 8.0
    long_pause_s: float = 0.12
    max_chunk_s: float = _FILE.max_chunk_s
    preroll_s: float = 0.2
    tail_s: float = 0.2
    min_speech_s: float = 0.1
    floor_window_s: float = 30.0
    speech_margin_db: float = 12.0
    loud_db: float = -40.0
    floor_db: float = -80.0


@dataclass(frozen=True)
class Chunk:
    """A closed stretch of speech: ``start`` in samples from the stream start, ``audio`` [samples] float32."""

    start: int
    audio: np.ndarray

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


class StreamSegmenter:
    """Feed 16 kHz float32 samples in order; get closed chunks back. ``open_chunk()`` is the speech
    of the chunk still open (for tentative captions)."""

    def __init__(
        self, config: StreamSegmenterConfig = StreamSegmenterConfig(), sample_rate: int = SAMPLE_RATE
    ) -> None:
        self.config, self.rate = config, sample_rate
        self.frame = max(1, int(config.frame_s * sample_rate))
        self.received = 0  # samples fed so far
        self._leftover = np.zeros(0, np.float32)  # less than a frame, not yet judged
        self._history: deque[float] = deque(maxlen=max(1, int(config.floor_window_s / config.frame_s)))
        self._preroll: deque[np.ndarray] = deque(maxlen=max(1, int(config.preroll_s / config.frame_s)))
        self._frames: list[np.ndarray] = []  # frames of the open chunk
        self._energy: list[float] = []
        self._speech: list[bool] = []
        self._start = 0  # sample index of the open chunk's first frame
        self._framed = 0  # samples judged (whole frames)

    # ------------------------------------------------------------------ feeding
    def feed(self, samples: np.ndarray) -> list[Chunk]:
        """samples: [n] float32 at ``sample_rate``; returns the chunks this closed, in order."""
        self.received += len(samples)
        data = np.concatenate([self._leftover, samples.astype(np.float32, copy=False)])
        whole = len(data) - len(data) % self.frame
        self._leftover = data[whole:].copy()
        if not whole:
            return []
        frames = data[:whole].reshape(-1, self.frame)
        energies = frame_energy_db(data[:whole], self.frame)
        closed = []
        for frame, energy in zip(frames, energies):
            closed.extend(self._frame(frame, float(energy)))
        return closed

    def flush(self) -> list[Chunk]:
        """End of stream: close the open chunk (with any partial frame)."""
        if self._frames and len(self._leftover):
            self._frames.append(self._leftover)
            self._energy.append(self._energy[-1])
            self._speech.append(False)
        self._leftover = np.zeros(0, np.float32)
        return self._close(len(self._frames))

    @property
    def in_speech(self) -> bool:
        return bool(self._frames)

    def open_chunk(self) -> Chunk | None:
        """The open chunk up to its last speech frame (plus tail), or None between chunks."""
        if not self._frames:
            return None
        last = len(self._speech) - self._speech[::-1].index(True)
        return Chunk(self._start, np.concatenate(self._frames[: self._with_tail(last)]))

    # ------------------------------------------------------------------ internals
    def _threshold(self) -> float:
        c = self.config
        floor = float(np.percentile(np.fromiter(self._history, float), 10))
        return max(min(floor + c.speech_margin_db, c.loud_db), c.floor_db)

    def _frames_of(self, seconds: float) -> int:
        return max(1, int(round(seconds / self.config.frame_s)))

    def _with_tail(self, last_speech_end: int) -> int:
        return min(len(self._frames), last_speech_end + self._frames_of(self.config.tail_s))

    def _frame(self, frame: np.ndarray, energy: float) -> list[Chunk]:
        self._history.append(energy)
        is_speech = energy > self._threshold()
        position = self._framed
        self._framed += len(frame)
        if not self._frames:
            if not is_speech:
                self._preroll.append(frame)
                return []
            self._frames, self._energy, self._speech = (
                list(self._preroll),
                [-100.0] * len(self._preroll),
                [False] * len(self._preroll),
            )
            self._start = position - sum(len(f) for f in self._preroll)
            self._preroll.clear()
        self._frames.append(frame)
        self._energy.append(energy)
        self._speech.append(is_speech)
        c = self.config
        chunk_s = len(self._frames) * c.frame_s
        pause = self._speech[::-1].index(True) if not is_speech else 0
        needed_pause = (
            c.long_pause_s
            if chunk_s >= c.long_chunk_s
            else c.min_pause_s
            if chunk_s >= c.min_chunk_s
            else c.end_pause_s
            if chunk_s - pause * c.frame_s >= c.short_chunk_s
            else c.short_pause_s
        )
        if pause and pause >= self._frames_of(needed_pause):
            return self._close(self._with_tail(len(self._frames) - pause), drop_rest=True)
        if chunk_s >= c.max_chunk_s:
            n = len(self._frames)
            tail = range(2 * n // 3, n)
            cut = tail.start + int(np.argmin(self._energy[tail.start :]))
            return self._close(cut)
        return []

    def _close(self, cut: int, drop_rest: bool = False) -> list[Chunk]:
        """Close the open chunk at frame ``cut``; frames after it start the next chunk (or are dropped)."""
        if not self._frames:
            return []
        frames, speech = self._frames[:cut], self._speech[:cut]
        chunk = Chunk(self._start, np.concatenate(frames)) if frames else None
        rest = (self._frames[cut:], self._energy[cut:], self._speech[cut:])
        self._start += sum(len(f) for f in frames)
        self._frames, self._energy, self._speech = [], [], []
        if not drop_rest and rest[0] and any(rest[2]):
            self._frames, self._energy, self._speech = list(rest[0]), list(rest[1]), list(rest[2])
        elif rest[0]:
            self._preroll.extend(rest[0])
        if chunk is None or sum(speech) * self.config.frame_s < self.config.min_speech_s:
            return []
        return [chunk]
