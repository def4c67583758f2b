"""What a transcription produces: timed segments, regions reported without text, run statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Segment:
    """start/end in seconds from the start of the recording; text as the model wrote it."""

    start: float
    end: float
    text: str


@dataclass
class Transcript:
    """segments: transcribed speech in time order; skipped: (start, end, reason) for every stretch
    that produced no text (silence, or a chunk that failed), so no second goes unaccounted;
    stats: duration, real-time factor, share of KV pages read and the like."""

    segments: list[Segment]
    duration: float
    skipped: list[tuple[float, float, str]] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "duration": round(self.duration, 3),
            "segments": [asdict(s) for s in self.segments],
            "skipped": [{"start": a, "end": b, "reason": r} for a, b, r in self.skipped],
            "stats": self.stats,
        }
