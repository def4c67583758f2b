"""One live stream on the server: its segmenter, its decoder and the task that turns closed chunks
into final captions (in order) and the open chunk into tentative ones (Whisper drafts of it, shown
as ``asr.live.agreement`` settles them).

Backpressure: ``wait_for_room`` holds the reader while more than ``max_backlog_s`` of audio waits
for the model, so a client that sends faster than the model decodes is slowed down (its frames
queue in the socket) instead of growing the server's memory; ``lag`` in every caption says how far
behind the captions are, and ``backlog`` in every final how much closed audio still waits for one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from asr.errors import AsrError
from asr.live.agreement import LocalAgreement
from asr.live.session import Caption, ChunkRequest, LiveDecoder, LiveModel
from asr.live.vad import Chunk, StreamSegmenter, StreamSegmenterConfig
from asr.live.worker import FINAL, PARTIAL, ModelWorker, Then
from asr.speech.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

ARRIVALS_KEPT = 4096  # (sample count, arrival time) pairs kept to time captions from their audio's arrival


@dataclass(frozen=True)
class StreamConfig:
    """max_seconds: longest stream (its context is sized for it); max_backlog_s: audio waiting for
    the model before the reader pauses; partial_interval_s: tentative captions this often while
    speech goes on, from one's request to the next's (after final captions: the worker serves those
    first); partial_share: most of the model's time tentative captions may take (a stream asks for
    its next draft no sooner than the last batched draft call took over this share after asking for
    the last, so all streams' drafts together stay within the share; on a slow CPU they come less
    often); min_partial_s: shortest open speech worth one."""

    max_seconds: float = 1800.0
    max_backlog_s: float = 60.0
    partial_interval_s: float = 1.0
    partial_share: float = 0.5
    min_partial_s: float = 0.5
    segmenter: StreamSegmenterConfig = field(default_factory=StreamSegmenterConfig)


class StreamSession:
    """``send(dict)`` delivers a message to the client; ``engine``: the server's shared one
    (``LiveModel.open_engine``); call ``open`` first, ``finish`` or ``abort`` last."""

    def __init__(
        self,
        session_id: str,
        model: LiveModel,
        engine,
        worker: ModelWorker,
        config: StreamConfig,
        send: Callable[[dict], Awaitable[None]],
        prompt: str = "",
    ) -> None:
        self.id, self.model, self.worker, self.config, self.send = session_id, model, worker, config, send
        self.engine = engine
        self.agreement = LocalAgreement()
        self.prompt = prompt
        self.segmenter = StreamSegmenter(config.segmenter, SAMPLE_RATE)
        self.decoder: LiveDecoder | None = None
        self.finals: deque[Chunk] = deque()
        self.captioned = 0  # samples up to the end of the last final
        self.latencies: list[float] = []  # seconds from a final's last sample arriving to its caption
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._last_partial = time.monotonic()  # when the last tentative caption was asked for
        self._partial_cost = 0.0  # model seconds of the last batched draft call this stream was in
        self._drafted: tuple[int, int] | None = None  # (start, end) samples of the last drafted open chunk

    @property
    def received_seconds(self) -> float:
        return self.segmenter.received / SAMPLE_RATE

    @property
    def backlog_seconds(self) -> float:
        return sum(len(c.audio) for c in self.finals) / SAMPLE_RATE

    async def open(self) -> None:
        self.decoder = await self.worker.run(
            self.id, partial(self.model.open, self.engine, self.prompt)
        )
        self._task = asyncio.create_task(self._decode_loop(), name=f"decode-{self.id}")

    def feed(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        if not self.segmenter.in_speech:
            self._last_partial = time.monotonic()  # the first tentative caption comes a full interval in
        closed = self.segmenter.feed(samples)
        if closed:  # a tentative caption still waiting is of a chunk now closed: its final goes first
            self.finals.extend(closed)
            self.worker.withdraw(self.id, PARTIAL)
        self._arrivals.append((self.segmenter.received, time.monotonic()))
        self._wake.set()

    async def wait_for_room(self) -> None:
        while self.backlog_seconds > self.config.max_backlog_s and not self._task.done():
            self._room.clear()
            await self._room.wait()

    async def finish(self) -> None:
        """No more audio: caption everything still open, then return (the caller sends ``done``)."""
        closed = self.segmenter.flush()
        if closed:
            self.finals.extend(closed)
            self.worker.withdraw(self.id, PARTIAL)
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._close_decoder()

    async def abort(self) -> None:
        """The client is gone: drop waiting work and free the context."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self.worker.forget(self.id)
        await self._close_decoder()

    async def _close_decoder(self) -> None:
        if self.decoder is not None:
            decoder, self.decoder = self.decoder, None
            try:
                await self.worker.run(self.id, decoder.close)
            except (asyncio.CancelledError, RuntimeError):  # worker stopped: the process is ending
                pass

    def stats(self) -> dict:
        ordered = sorted(self.latencies)
        return {
            "audio_seconds": round(self.received_seconds, 3),
            "finals": len(self.latencies),
            "latency_p50": ordered[len(ordered) // 2] if ordered else None,
        }

    # ------------------------------------------------------------------ decoding
    def _arrival(self, sample: int) -> float:
        for count, when in self._arrivals:
            if count >= sample:
                return when
        return time.monotonic()

    def _caption(self, kind: str, caption: Caption, **extra) -> dict:
        lag = max(0.0, self.received_seconds - caption.end)
        return {
            "type": kind,
            "text": caption.text,
            "start": round(caption.start, 3),
            "end": round(caption.end, 3),
            "lag": round(lag, 3),
            **extra,
        }

    async def _decode_loop(self) -> None:
        config = self.config
        while True:
            if self.finals:
                chunk = self.finals[0]
                arrived = self._arrival(chunk.end)  # when its last sample came: its latency counts from there
                try:  # Whisper's side beside other calls, batched with other streams'; then the LLM's
                    request = ChunkRequest(chunk.audio, chunk.start / SAMPLE_RATE, self.decoder)
                    caption = await self.worker.run_batched(
                        self.id, self.model.encode_finals, request, FINAL, due=arrived, serial=False,
                        then=Then(partial(self.model.final, request)))
                except AsrError as error:  # e.g. the context is full: say so, keep the stream alive
                    self.finals.popleft()
                    await self.send({"type": "error", "code": "decode_failed", "message": str(error)})
                    continue
                self.finals.popleft()
                self._room.set()
                self.captioned = chunk.end
                latency = time.monotonic() - arrived
                self.latencies.append(latency)
                await self.send(self._caption("final", caption, latency=round(latency, 3),
                                              backlog=round(self.backlog_seconds, 3)))
                continue
            if self._stopping:
                return
            # tentative captions take at most ``partial_share`` of the worker's time
            spacing = self._partial_cost / config.partial_share
            wait = max(config.partial_interval_s, spacing) - (time.monotonic() - self._last_partial)
            open_chunk = self.segmenter.open_chunk()
            # in a pause the open chunk stops growing: its draft would repeat the last one, so none is asked
            # for until speech goes on (or a final closes the chunk)
            unchanged = open_chunk is not None and (open_chunk.start, open_chunk.end) == self._drafted
            if (
                open_chunk is not None
                and not unchanged
                and wait <= 0
                and len(open_chunk.audio) >= config.min_partial_s * SAMPLE_RATE
            ):
                request = ChunkRequest(open_chunk.audio, open_chunk.start / SAMPLE_RATE)
                self._last_partial = time.monotonic()
                self._drafted = (open_chunk.start, open_chunk.end)
                caption = await self.worker.run_batched(self.id, self.model.drafts, request, PARTIAL,
                                                        serial=False)
                if caption is None:  # withdrawn: the chunk closed while it waited
                    continue
                self._partial_cost = caption.seconds
                if not self.finals and open_chunk.start == getattr(
                    self.segmenter.open_chunk(), "start", None
                ):  # still the open chunk: no final has closed it meanwhile
                    stable, unstable = self.agreement.update(open_chunk.start, caption.text)
                    tentative = replace(caption, text=stable)
                    await self.send(self._caption("partial", tentative, unstable=unstable))
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=None if unchanged else max(wait, 0.05))
            except TimeoutError:
                pass


def dumps(message: dict) -> str:
    return json.dumps(message, ensure_ascii=False)
