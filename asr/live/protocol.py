"""The live-caption protocol (README, "Live captions"): message shapes, error codes, close codes,
and the client's audio format turned into 16 kHz float32 samples.

Client -> server: ``{"type": "start", "sample_rate": 16000, "format": "pcm_s16le"}`` (``pcm_f32le``
too; optional ``"prompt"``), binary audio frames, ``{"type": "stop"}``.
Server -> client: ``ready`` (``session``), ``partial`` and ``final`` (``text``, ``start``, ``end`` in
seconds from the session start; ``lag``: seconds of received audio not yet captioned), ``error``
(``code``, ``message``), ``done``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from asr.errors import AsrError, AudioError
from asr.speech.audio import SAMPLE_RATE, PcmFormat, decode_pcm

FORMATS = {"pcm_s16le": "s16le", "pcm_f32le": "f32le", "s16le": "s16le", "f32le": "f32le"}
MIN_RATE, MAX_RATE = 8000, 192000
MAX_PROMPT_CHARS = 1000

# Close codes (RFC 6455 ones where one fits).
CLOSE_NORMAL = 1000  # after ``done``
CLOSE_GOING_AWAY = 1001  # server shutting down (finals flushed first)
CLOSE_POLICY = 1008  # unknown path
CLOSE_TOO_BIG = 1009  # a frame above the size limit (sent by the websockets library)
CLOSE_BUSY = 1013  # "try again later": the maximum number of sessions is reached


class ProtocolError(AsrError):
    """A client message the protocol does not allow; ``code`` goes into the ``error`` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StreamFormat:
    """What a ``start`` message asks for."""

    sample_rate: int = SAMPLE_RATE
    encoding: str = "s16le"
    prompt: str = ""


def parse_message(text: str) -> dict:
    """A text message as a JSON object with a string ``type``; ProtocolError otherwise."""
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ProtocolError("bad_json", f"text messages must be JSON objects ({error})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(
            "bad_message", 'a message must be a JSON object with a "type" ("start" or "stop")'
        )
    return message


def parse_start(message: dict) -> StreamFormat:
    rate = message.get("sample_rate", SAMPLE_RATE)
    if isinstance(rate, float) and math.isfinite(rate) and rate.is_integer():
        rate = int(rate)
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(
            "bad_rate", f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE} Hz, got {rate!r}"
        )
    name = message.get("format", "pcm_s16le")
    if name not in FORMATS:
        raise ProtocolError("bad_format", f'format must be "pcm_s16le" or "pcm_f32le", got {name!r}')
    prompt = message.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise ProtocolError("bad_prompt", f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    return StreamFormat(rate, FORMATS[name], prompt)


class AudioInput:
    """Binary frames in the client's format -> [samples] float32 at 16 kHz, resampled as a stream
    (filter state carries across frames, so frame edges leave no clicks)."""

    def __init__(self, stream: StreamFormat) -> None:
        self.stream = stream
        self.pcm = PcmFormat(stream.sample_rate, stream.encoding)
        self._resampler = None
        if stream.sample_rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(stream.sample_rate, SAMPLE_RATE, 1, dtype="float32")

    def decode(self, frame: bytes) -> np.ndarray:
        try:
            samples = decode_pcm(frame, self.pcm, self.pcm.sample_rate)
        except AudioError as error:
            code = "bad_samples" if "NaN" in str(error) else "odd_length"
            raise ProtocolError(code, f"frame dropped: {error}") from None
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return samples

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)


def error_message(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})
