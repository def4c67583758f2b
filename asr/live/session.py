"""The live service's only contact with the speech library: load one model, open one engine that
every stream of a server shares, one decoder (sequence) per stream in it, and decode captions in
batches across streams. Keep it that way: when the speech API changes (who owns the engine, what
``transcribe_chunk`` does inside), this module is what adapts.

Final captions come from the speech LLM (``LongformSession.transcribe_chunk``) in two calls: the chunks
of the streams waiting for one go through the Whisper encoder (and its draft) in batches of one window
length (``encode_finals``, which may run beside other calls), then each through the LLM (``final``,
one at a time: the engine is shared); ``finals`` does both, each batch's finals decoded before the
next batch is encoded. The model takes ``workers`` calls at once (two on a CPU of two cores or more,
each on half the threads: ``asr.live.worker``). Tentative
captions come from Whisper's draft alone (``AudioEncoder.draft`` with a margin): the LLM is off their
path, and the drafts of all streams waiting for one are one batch. Both encode windows only a
little longer than their chunks (``PARTIAL_MARGIN_S``, ``FINAL_MARGIN_S``), not 30 s.

A final whose draft Whisper was sure of is sent without LLM work; its audio and transcript still go
into the stream's context, prefilled later (``DEFERRED_CHUNKS``): when the worker is idle
(``settle_context``), or with the stream's next chunk the LLM must read, whichever comes first.

Every method here runs on the model worker's thread (``asr.live.worker``), never on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from asr.errors import AsrError
from asr.llm.cpu_defaults import default_threads, run_device
from asr.llm.engine import LLMEngine
from asr.speech.audio import SAMPLE_RATE
from asr.speech.longform import LongformSession
from asr.speech.model import EncodedChunk, SpeechModel
from asr.speech.pipeline import TranscribeOptions, load_transcriber

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 200  # an optional client prompt sits in the context for the whole session
# Live chunks are encoded in windows as long as the chunk plus at least this much silence (in whole
# 2.5-s steps: ``AudioEncoder.window_samples``), not 30 s (a 5-s chunk in a 10-s window costs about a
# fifth of the encoder time). With no silence Whisper's decoder reads past the audio's end
# and repeats itself: dev-set draft WER 27.9% against 10.1% in 30-s windows; 2 s of silence: 12.2%,
# 5 s: 10.5% (eval/draft_window.py, BENCHMARKS.md). Tentative captions take the cheaper window (the
# next draft and the final correct them); finals, which keep what they write, the closer one.
PARTIAL_MARGIN_S = 2.0
FINAL_MARGIN_S = 5.0
# kept chunks a stream's context may hold back from its prefill (a few: bounded memory and one
# bounded prefill when they go in with a chunk the LLM reads)
DEFERRED_CHUNKS = 4
# model calls at once on a CPU with two threads or more, each on half of them: on 2 cores two one-thread
# calls side by side got 1.2x the work of one two-thread call done (BENCHMARKS.md, session 16)
CPU_WORKERS = 2


@dataclass(frozen=True)
class Caption:
    """One decoded piece: seconds from the stream start, text (may be empty), and what it cost."""

    start: float
    end: float
    text: str
    seconds: float  # model time spent on it: a final's share of its batch; a draft's whole batched call


@dataclass(frozen=True)
class EncodedFinal:
    """A closed chunk through Whisper (``LiveModel.encode_finals``): its LLM inputs and draft, and its
    share of the encoder call's seconds."""

    chunk: EncodedChunk
    seconds: float


@dataclass(frozen=True)
class ChunkRequest:
    """A chunk of one stream to caption: ``audio`` [samples] float32 16 kHz starting at ``start_s``
    seconds; ``decoder``: the stream's (finals only; tentative captions need no context)."""

    audio: np.ndarray
    start_s: float
    decoder: LiveDecoder | None = None

    @property
    def end_s(self) -> float:
        return self.start_s + len(self.audio) / SAMPLE_RATE


class LiveModel:
    """One loaded speech model shared by every live session. ``workers``: threads that may call it at
    once (``asr.live.worker``); calls that touch the engine (``open``, ``final``, ``settle_context``,
    closing a decoder) one at a time, ``encode_finals`` and ``drafts`` beside anything."""

    def __init__(self, model: SpeechModel, options: TranscribeOptions, workers: int = 1) -> None:
        self.model, self.options, self.workers = model, options, workers
        self.decoders: list[LiveDecoder] = []  # open ones, oldest first

    @classmethod
    def load(
        cls, model_dir: str | None = None, options: TranscribeOptions = TranscribeOptions(),
        workers: int | None = None,
    ) -> LiveModel:
        """The model for ``workers`` calls at once (None: ``CPU_WORKERS`` on a CPU with that many threads
        or more, else one), each on ``options.threads`` (default: one per physical core) split between
        them."""
        threads = options.threads or default_threads()
        if workers is None:
            cpu = run_device(options.device).type == "cpu"
            workers = CPU_WORKERS if cpu and threads >= CPU_WORKERS else 1
        options = replace(options, threads=max(1, threads // workers))
        transcriber = load_transcriber(model_dir, options, parallel_calls=workers)
        return cls(transcriber.model, transcriber.options, workers)

    def open_engine(self, max_streams: int, max_seconds: float) -> LLMEngine:
        """One engine for ``max_streams`` streams of up to ``max_seconds`` each (and a prompt): one
        paged KV pool they all draw from, allocated once, so memory stays flat however streams come
        and go."""
        prompt_seconds = MAX_PROMPT_TOKENS / 12.5  # room for a prompt, as audio tokens
        config = replace(self.options.engine_config(), max_batch=max_streams)
        return self.model.open_engine(config, expected_seconds=max_seconds + prompt_seconds)

    def open(self, engine: LLMEngine, prompt: str = "") -> LiveDecoder:
        """A decoder for one stream: a new sequence of ``engine`` (from ``open_engine``)."""
        session = self.model.open_session(
            engine, self.options.loop, self.options.distance_cap(), self.options.draft_decoding(),
            defer_kept=DEFERRED_CHUNKS,
        )
        if prompt:
            ids = self.model.tokenizer(prompt, add_special_tokens=False).input_ids[:MAX_PROMPT_TOKENS]
            engine.append(session.seq, token_ids=ids)
        decoder = LiveDecoder(session, self.decoders.remove)
        self.decoders.append(decoder)
        return decoder

    def settle_context(self) -> bool:
        """Idle work (``ModelWorker``'s ``idle``): prefill the context one stream's finals left for later,
        the stream that has waited longest; False when no stream has any."""
        waiting = next((decoder for decoder in self.decoders if decoder.session.deferred), None)
        if waiting is None:
            return False
        waiting.session.flush()
        self.decoders.remove(waiting)  # to the back: streams take turns
        self.decoders.append(waiting)
        return True

    def finals(self, requests: list[ChunkRequest]) -> Iterator[tuple[int, Caption | AsrError]]:
        """Each closed chunk appended with its transcript to its stream's context for good: the chunks
        of one window length through Whisper (``encode_finals``), then through the speech LLM
        (``final``), those whose drafts are kept whole (no LLM work) first, before the next window
        length is encoded, so a final waits for its own group's Whisper work only. Yields (position in
        ``requests``, its caption) as each is done. A chunk the speech library refuses (e.g. its
        context is full) yields the error, the others go on."""
        for positions in self._window_groups(requests).values():
            group = [requests[position] for position in positions]
            encoded = [encoded for _, encoded in sorted(self._encode_group(group, range(len(group))))]
            sessions = [request.decoder.session for request in group]
            order = sorted(range(len(group)), key=lambda i: sessions[i].kept_draft(
                len(group[i].audio) / SAMPLE_RATE, encoded[i].chunk.draft) is None)
            for index in order:
                try:
                    yield positions[index], self.final(group[index], encoded[index])
                except AsrError as error:
                    yield positions[index], error

    def encode_finals(self, requests: list[ChunkRequest]) -> Iterator[tuple[int, EncodedFinal]]:
        """The Whisper side of each closed chunk's final (encoder window, draft, other readings of an
        unsure draft; no engine work, so it may run beside other calls), in groups of one window length
        (``AudioEncoder.window_samples``: only those share an encoder batch), in the order of
        ``requests``. Yields (position in ``requests``, its ``EncodedFinal``) as each group is done."""
        for positions in self._window_groups(requests).values():
            yield from self._encode_group([requests[position] for position in positions], positions)

    def final(self, request: ChunkRequest, encoded: EncodedFinal) -> Caption:
        """The speech LLM's side of a closed chunk's final (``encode_finals`` gave ``encoded``): the chunk
        and its transcript appended to the stream's context for good. Raises what the speech library
        raises (``AsrError``: e.g. the context is full)."""
        began = time.perf_counter()
        segment = request.decoder.session.transcribe_chunk(request.audio, request.start_s, SAMPLE_RATE,
                                                           encoded=encoded.chunk)
        return Caption(request.start_s, request.end_s, segment.text if segment else "",
                       encoded.seconds + time.perf_counter() - began)

    def _window_groups(self, requests: list[ChunkRequest]) -> dict[int, list[int]]:
        """Window samples -> the positions in ``requests`` of the chunks encoded in windows that long."""
        groups: dict[int, list[int]] = {}
        for position, request in enumerate(requests):
            window = self.model.encoder.window_samples([request.audio], FINAL_MARGIN_S)
            groups.setdefault(window, []).append(position)
        return groups

    def _encode_group(self, requests: list[ChunkRequest],
                      positions) -> Iterator[tuple[int, EncodedFinal]]:
        """``encode_finals`` of chunks that share one encoder window length; yields their ``positions``."""
        began = time.perf_counter()
        encoded = self.model.encode_chunks([request.audio for request in requests],
                                           self.options.draft_decoding().search(), FINAL_MARGIN_S)
        share = (time.perf_counter() - began) / len(requests)
        for position, chunk in zip(positions, encoded):
            yield position, EncodedFinal(chunk, share)

    def drafts(self, requests: list[ChunkRequest]) -> Iterator[tuple[int, Caption]]:
        """Whisper's draft of each still-open chunk (no context, nothing kept), as one batch of
        short encoder windows, as (position in ``requests``, caption); empty texts when the model
        has no Whisper decoder loaded."""
        began = time.perf_counter()
        audios = [request.audio for request in requests]
        if self.model.encoder.drafter is None:
            texts = [""] * len(requests)
        else:
            texts = [draft.text for draft in self.model.encoder.draft(audios, margin_s=PARTIAL_MARGIN_S)]
        seconds = time.perf_counter() - began  # what one round of every stream's tentative captions cost
        for position, (request, text) in enumerate(zip(requests, texts)):
            yield position, Caption(request.start_s, request.end_s, text, seconds)


class LiveDecoder:
    """One stream in one growing decoder context (``LongformSession``) of the shared engine;
    ``on_close(decoder)`` is told when it closes."""

    def __init__(self, session: LongformSession, on_close: Callable[[LiveDecoder], None]) -> None:
        self.session, self.on_close = session, on_close
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.session.close()
            self.on_close(self)
