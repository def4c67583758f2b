"""What a transcription produces: timed segments, regions reported without text, run statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Segment:
    """start/end in seconds from the start of the recording; text as the model wrote it."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class TranscriptStats:
    """How a transcription ran (the ``stats`` object of the json output, keys as named here).

    duration: seconds of audio; seconds: wall-clock seconds spent; rtf: seconds / duration;
    kv_pages_read: share of the KV pages that decode steps read (1.0 when the whole context fit the
    sparse budget, or with dense attention); attention, budget_tokens, max_distance: the settings;
    chunks: speech chunks decoded; loops_cut: chunks whose repetition loop was cut; budget_stops:
    chunks stopped at their token budget; context_tokens: tokens in the context at the end;
    text_tokens: transcript tokens generated; drafts:
    whether Whisper drafts were in the context; draft_tokens: tokens they proposed;
    draft_tokens_accepted: of those, kept by the LLM; prefill: how appended chunks attended the
    context (``dense`` or ``unisparse``); chunk_seconds: per decoded chunk, its start in the audio
    and the wall-clock seconds of its LLM work (prefill and decoding; encoding is batched apart)."""

    duration: float
    seconds: float
    rtf: float
    kv_pages_read: float
    attention: str
    budget_tokens: int
    chunks: int
    loops_cut: int
    budget_stops: int
    context_tokens: int
    text_tokens: int
    max_distance: int | None
    drafts: bool
    draft_tokens_accepted: int
    draft_tokens: int
    prefill: str = "dense"
    chunk_seconds: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Transcript:
    """segments: transcribed speech in time order; skipped: (start, end, reason) for every stretch
    that produced no text (silence, or a chunk that failed), so no second goes unaccounted;
    stats: how the run went (None for a transcript not made by the pipeline)."""

    segments: list[Segment]
    duration: float
    skipped: list[tuple[float, float, str]] = field(default_factory=list)
    stats: TranscriptStats | None = None

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "duration": round(self.duration, 3),
            "segments": [asdict(s) for s in self.segments],
            "skipped": [{"start": a, "end": b, "reason": r} for a, b, r in self.skipped],
            "stats": asdict(self.stats) if self.stats is not None else {},
        }
