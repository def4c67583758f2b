"""Audio input: files or encoded bytes of any format, rate and channel count -> float32 mono at 16 kHz.

Decoding tries soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3 on libsndfile >= 1.1) first, then
audioread through librosa (ffmpeg, GStreamer or Core Audio, whichever the machine has) for the rest.
Raw PCM from a streaming client has no header; ``decode_pcm`` reads it given its ``PcmFormat``.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.errors import AudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
PCM_DTYPES = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
# Full scale of 16-bit PCM: int16 samples are divided by it to land in [-1, 1).
INT16_FULL_SCALE = 32768.0


@dataclass(frozen=True)
class PcmFormat:
    """Headerless little-endian PCM: ``s16le`` (int16) or ``f32le`` (float32), frames interleaved
    over ``channels``."""

    sample_rate: int = SAMPLE_RATE
    encoding: str = "s16le"
    channels: int = 1


def _to_mono(samples: np.ndarray) -> np.ndarray:
    """[samples] or [samples, channels] -> [samples] float32 (channel mean)."""
    return (samples.mean(axis=1) if samples.ndim == 2 else samples).astype(np.float32, copy=False)


def _resample(samples: np.ndarray, source_rate: int, sample_rate: int) -> np.ndarray:
    if source_rate == sample_rate:
        return samples
    import librosa

    return librosa.resample(samples, orig_sr=source_rate, target_sr=sample_rate).astype(
        np.float32, copy=False
    )


def _checked(samples: np.ndarray, source_rate: int, sample_rate: int, name: str) -> np.ndarray:
    """Mono, resampled, and refused when it holds no samples or non-finite ones."""
    if samples.size == 0:
        raise AudioError(
            f"{name} decodes to zero samples (a header without sound); give a recording with audio"
        )
    samples = _resample(_to_mono(samples), source_rate, sample_rate)
    if not np.isfinite(samples).all():
        raise AudioError(f"{name} holds NaN or infinite samples; the recording is corrupt, {_convert_hint()}")
    return np.ascontiguousarray(samples)


def _convert_hint() -> str:
    """What to do with a file this machine cannot decode: ffmpeg's command where ffmpeg is installed,
    else the formats that libsndfile reads without it."""
    if shutil.which("ffmpeg"):
        return f"convert it with `ffmpeg -i INPUT -ac 1 -ar {SAMPLE_RATE} OUTPUT.wav` and try again"
    return "convert it to wav, flac, ogg or mp3 (read here without ffmpeg) and try again"


def _undecodable(name: str, soundfile_error: Exception, reason: str) -> AudioError:
    soundfile_reason = getattr(soundfile_error, "error_string", soundfile_error)
    return AudioError(
        f"{name} is not audio in a format this machine can decode (soundfile: {soundfile_reason}; "
        f"{reason}); {_convert_hint()}"
    )


def _decode_audioread(path: str, name: str, soundfile_error: Exception) -> tuple[np.ndarray, int]:
    """Fallback decoder (audioread backends) for formats libsndfile cannot read: [samples, channels], rate."""
    try:
        import audioread
    except ImportError as error:  # a librosa dependency, but it imports modules Python 3.13 dropped
        raise _undecodable(name, soundfile_error, f"audioread unavailable: {error}") from soundfile_error
    try:
        with audioread.audio_open(path) as stream:
            rate, channels = stream.samplerate, stream.channels
            pcm = b"".join(stream)
    except audioread.NoBackendError:
        raise _undecodable(
            name, soundfile_error, "no audioread backend (ffmpeg, GStreamer) is installed"
        ) from None
    except (audioread.DecodeError, EOFError, OSError) as error:
        raise _undecodable(name, soundfile_error, f"audioread: {error or type(error).__name__}") from error
    return np.frombuffer(pcm, PCM_DTYPES["s16le"]).reshape(-1, channels) / np.float32(INT16_FULL_SCALE), rate


def check_audio_path(path: str | Path) -> None:
    """Raise ``AudioError`` if ``path`` is not a file or is empty (cheap: run it before loading a model)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path} does not exist or is not a file; check the path")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes); give a recording with audio")


def load_audio(source: str | Path | bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file path or encoded file bytes into [samples] float32 mono in [-1, 1] at ``sample_rate``.

    Raises ``AudioError`` for a missing, empty, corrupt or unreadable input, or one without samples.
    """
    name = f"{len(source)} bytes of audio" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes):
        check_audio_path(source)
    elif not source:
        raise AudioError("the audio data is empty (0 bytes); send a recording with audio")
    try:
        samples, source_rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                                       dtype="float32", always_2d=False)
    except sf.LibsndfileError as error:
        log.debug("soundfile cannot read %s (%s); trying audioread", name, error)
        if not isinstance(source, bytes):
            samples, source_rate = _decode_audioread(str(source), name, error)
        else:
            # audioread backends read files, not buffers.
            with tempfile.NamedTemporaryFile(suffix=".audio") as handle:
                handle.write(source)
                handle.flush()
                samples, source_rate = _decode_audioread(handle.name, name, error)
    return _checked(samples, source_rate, sample_rate, name)


def decode_pcm(data: bytes, pcm: PcmFormat = PcmFormat(), sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Headerless PCM bytes (whole frames) -> [samples] float32 mono at ``sample_rate``.

    A streaming service must buffer partial frames itself: ``len(data)`` has to be a multiple of
    sample width x channels.
    """
    if pcm.encoding not in PCM_DTYPES:
        raise AudioError(f"unknown PCM encoding {pcm.encoding!r}; use one of {sorted(PCM_DTYPES)}")
    if pcm.sample_rate <= 0 or pcm.channels <= 0:
        raise AudioError(f"PCM format needs a positive rate and channel count, got {pcm}")
    dtype = PCM_DTYPES[pcm.encoding]
    frame_bytes = dtype.itemsize * pcm.channels
    if len(data) % frame_bytes:
        raise AudioError(
            f"{len(data)} bytes of {pcm.encoding} PCM with {pcm.channels} channel(s) is not a whole "
            f"number of {frame_bytes}-byte frames; send whole frames"
        )
    samples = np.frombuffer(data, dtype=dtype).reshape(-1, pcm.channels).astype(np.float32)
    if pcm.encoding == "s16le":
        samples /= INT16_FULL_SCALE
    return _checked(samples, pcm.sample_rate, sample_rate, f"{len(data)} bytes of {pcm.encoding} PCM")
