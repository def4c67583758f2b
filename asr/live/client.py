"""A small client of the live-caption protocol (tests, ``eval/bench_live.py`` and the README's example).

``stream_audio`` sends 16 kHz float32 samples as ``pcm_s16le`` frames, paced at ``speed`` x real time,
then ``stop``, and returns every server message with the time it arrived; ``latency`` of a final
is measured here from the moment its last sample was sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import websockets

from asr.speech.audio import SAMPLE_RATE

INT16_MAX = 32767


@dataclass
class StreamResult:
    """messages: server messages in arrival order (each with ``received``: seconds since the first
    frame was sent); latencies: per final, seconds from sending its last sample to receiving it."""

    messages: list[dict] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    close_code: int | None = None

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    @property
    def text(self) -> str:
        return " ".join(m["text"] for m in self.of("final") if m["text"])


def pcm_s16le(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * INT16_MAX).astype("<i2").tobytes()


async def stream_audio(
    url: str,
    samples: np.ndarray,
    speed: float | Callable[[float], float] = 1.0,
    frame_s: float = 0.1,
    token: str | None = None,
    timeout_s: float = 300.0,
    before_frame: Callable[[float, StreamResult], Awaitable[None]] | None = None,
) -> StreamResult:
    """Stream ``samples`` ([n] float32, 16 kHz) to ``url`` (ws://HOST:PORT/ws) and collect the captions.
    ``speed``: x real time (``inf``: as fast as the server reads), or a function of the stream
    position in seconds giving it; ``before_frame(position_s, result so far)`` is awaited before
    each frame is sent (a benchmark waits there for captions to catch up)."""
    speed_at = speed if callable(speed) else (lambda _position: speed)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    result = StreamResult()
    sent_at: list[tuple[int, float]] = []  # (samples sent, when)
    # the server stops reading (pings included) while the model is behind: wait for it, don't time out
    async with websockets.connect(url, additional_headers=headers, max_size=None, ping_timeout=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "format": "pcm_s16le"}))
        began = time.monotonic()

        async def read() -> None:
            async for raw in ws:
                message = json.loads(raw)
                now = time.monotonic()
                message["received"] = now - began
                result.messages.append(message)
                if message["type"] == "final":
                    end = int(round(message["end"] * SAMPLE_RATE))
                    sent = next((when for count, when in sent_at if count >= end), now)
                    result.latencies.append(now - sent)
                if message["type"] == "done":
                    return

        reader = asyncio.create_task(read())
        frame = int(frame_s * SAMPLE_RATE)
        due = 0.0  # when the next frame is due, in seconds since the start (never behind now)
        for offset in range(0, len(samples), frame):
            piece = samples[offset : offset + frame]
            if before_frame is not None:
                await before_frame(offset / SAMPLE_RATE, result)
            await ws.send(pcm_s16le(piece))
            sent_at.append((offset + len(piece), time.monotonic()))
            due = max(due, time.monotonic() - began) + len(piece) / SAMPLE_RATE / speed_at(
                offset / SAMPLE_RATE
            )
            lead = due - (time.monotonic() - began)
            if lead > 0:
                await asyncio.sleep(lead)
            if reader.done():
                break
        if not reader.done():
            await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, timeout_s)
        try:
            await asyncio.wait_for(ws.wait_closed(), 10)
        except TimeoutError:
            pass
        result.close_code = ws.close_code
    return result
