"""The live service's only contact with the speech library: load one model, open one decoder per
stream, decode final and tentative captions. Keep it that way: when the speech API changes
(who owns the engine, what ``transcribe_chunk`` does inside), this module is what adapts.

Every method here runs on the model worker's thread (``asr.live.worker``), never on the event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from asr.speech.audio import SAMPLE_RATE
from asr.speech.longform import LongformSession
from asr.speech.model import SpeechModel
from asr.speech.pipeline import TranscribeOptions, load_transcriber
from asr.speech.repetition import LoopConfig

MAX_PROMPT_TOKENS = 200  # an optional client prompt sits in the context for the whole session
# A tentative caption only has to show the gist: a short token budget per second keeps it cheap.
PARTIAL_LOOP = LoopConfig(tokens_per_second=4.0, extra_tokens=8)


@dataclass(frozen=True)
class Caption:
    """One decoded piece: seconds from the stream start, text (may be empty), and what it cost."""

    start: float
    end: float
    text: str
    seconds: float  # model time spent on it


class LiveModel:
    """One loaded speech model shared by every live session (model calls on one thread only)."""

    def __init__(self, model: SpeechModel, options: TranscribeOptions) -> None:
        self.model, self.options = model, options

    @classmethod
    def load(
        cls, model_dir: str | None = None, options: TranscribeOptions = TranscribeOptions()
    ) -> LiveModel:
        transcriber = load_transcriber(model_dir, options)
        return cls(transcriber.model, transcriber.options)

    def open(self, max_seconds: float, prompt: str = "") -> LiveDecoder:
        """A decoder whose context holds ``max_seconds`` of stream: its own engine (KV cache sized for
        it) over the shared weights, one session in it."""
        prompt_seconds = MAX_PROMPT_TOKENS / 12.5 if prompt else 0.0  # room for the prompt, as audio tokens
        engine = self.model.open_engine(
            self.options.engine_config(), expected_seconds=max_seconds + prompt_seconds
        )
        session = self.model.open_session(
            engine, self.options.loop, self.options.distance_cap(), self.options.draft_decoding()
        )
        if prompt:
            ids = self.model.tokenizer(prompt, add_special_tokens=False).input_ids[:MAX_PROMPT_TOKENS]
            engine.append(session.seq, token_ids=ids)
        return LiveDecoder(session)


class LiveDecoder:
    """One stream in one growing decoder context (``LongformSession``)."""

    def __init__(self, session: LongformSession) -> None:
        self.session = session
        self.closed = False

    def _encode(self, audio: np.ndarray):
        """The chunk's embeddings (and Whisper draft): one encoder call (streams are not batched yet)."""
        return self.session.model.encode_chunks([audio], self.session.draft_decoding.search())[0]

    def final(self, audio: np.ndarray, start_s: float) -> Caption:
        """Append a closed chunk and its transcript to the context for good."""
        began = time.perf_counter()
        segment = self.session.transcribe_chunk(audio, start_s, SAMPLE_RATE, encoded=self._encode(audio))
        end_s = start_s + len(audio) / SAMPLE_RATE
        return Caption(start_s, end_s, segment.text if segment else "", time.perf_counter() - began)

    def partial(self, audio: np.ndarray, start_s: float) -> Caption:
        """Decode the still-open chunk on the session's context, then roll the context back."""
        began = time.perf_counter()
        session = self.session
        length, pending, stats, loop = (
            session.seq.num_tokens,
            session.pending,
            replace(session.stats),
            session.loop,
        )
        session.loop = PARTIAL_LOOP
        try:
            segment = session.transcribe_chunk(audio, start_s, SAMPLE_RATE, encoded=self._encode(audio))
        finally:
            session.engine.truncate(session.seq, length)
            session.pending, session.stats, session.loop = pending, stats, loop
        end_s = start_s + len(audio) / SAMPLE_RATE
        return Caption(start_s, end_s, segment.text if segment else "", time.perf_counter() - began)

    def stats(self) -> dict:
        s = self.session
        return {
            "chunks": s.stats.chunks,
            "context_tokens": s.seq.num_tokens,
            "kv_pages_read": s.kv_read_share,
        }

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.session.close()
