"""Audio loading: real files of several formats, rates and channel counts; raw PCM; refused inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.errors import AudioError
from asr.speech.audio import PcmFormat, decode_pcm, load_audio

DEV = Path("/work/shared/data/speech_dev")
TONE_HZ = 440.0
SECONDS = 1.5


def tone(rate: int, channels: int) -> np.ndarray:
    """[samples, channels] float32: 440 Hz at amplitude 0.5 in channel 0, half that in the others."""
    t = np.arange(int(SECONDS * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * TONE_HZ * t)
    return np.stack([wave] + [0.5 * wave] * (channels - 1), axis=1).astype(np.float32)


def expected_rms(channels: int) -> float:
    mono_amplitude = 0.5 * (1 + 0.5 * (channels - 1)) / channels
    return mono_amplitude / np.sqrt(2)


def peak_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def check_tone(samples: np.ndarray, channels: int, rms_tolerance: float) -> None:
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - SECONDS * 16000) <= 2
    assert abs(peak_hz(samples) - TONE_HZ) < 1.0
    middle = samples[len(samples) // 4 : -len(samples) // 4]  # away from resampler edges
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(expected_rms(channels), rel=rms_tolerance)


@pytest.mark.parametrize("rate", [8000, 16000, 44100], ids=lambda r: f"{r}Hz")
@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize(
    "suffix,subtype,rms_tolerance",
    [
        pytest.param("wav", "PCM_16", 1e-3, id="wav16"),
        pytest.param("wav", "FLOAT", 1e-3, id="wavf32"),
        pytest.param("flac", "PCM_16", 1e-3, id="flac"),
        pytest.param("ogg", "VORBIS", 3e-2, id="ogg"),
    ],
)
def test_files_become_16k_mono(tmp_path, rate, channels, suffix, subtype, rms_tolerance):
    path = tmp_path / f"tone.{suffix}"
    sf.write(path, tone(rate, channels), rate, subtype=subtype)
    samples = load_audio(path)
    check_tone(samples, channels, rms_tolerance)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), samples)


def test_other_target_rate(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(44100, 1), 44100)
    samples = load_audio(path, sample_rate=8000)
    assert abs(len(samples) - SECONDS * 8000) <= 2
    assert abs(peak_hz(samples, 8000) - TONE_HZ) < 1.0


@pytest.mark.skipif(not (DEV / "manifest.jsonl").is_file(), reason="shared speech_dev data absent")
def test_real_flac_is_read_unchanged():
    row = json.loads((DEV / "manifest.jsonl").read_text().splitlines()[0])
    samples = load_audio(DEV / row["audio"])
    stored, rate = sf.read(DEV / row["audio"], dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(samples, stored)
    assert len(samples) / 16000 == pytest.approx(row["duration_s"], abs=0.01)


def write_corrupt(path: Path) -> None:
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)


def write_text(path: Path) -> None:
    path.write_text("this is a transcript, not a recording\n" * 50)


def write_zero_samples(path: Path) -> None:
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)


@pytest.mark.parametrize(
    "name,write,message",
    [
        pytest.param("empty.wav", lambda p: p.write_bytes(b""), "empty", id="empty-file"),
        pytest.param("corrupt.wav", write_corrupt, "not audio", id="corrupt-wav"),
        pytest.param("notes.mp3", write_text, "not audio", id="text-as-mp3"),
        pytest.param("silent.wav", write_zero_samples, "zero samples", id="zero-length"),
        pytest.param("missing.flac", lambda p: None, "does not exist", id="missing"),
    ],
)
def test_unreadable_files_raise_audio_error(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(AudioError, match=message):
        load_audio(path)


@pytest.mark.parametrize(
    "data,message", [(b"", "empty"), (b"\x00\x01garbage" * 64, "not audio")], ids=["empty", "garbage"]
)
def test_unreadable_bytes_raise_audio_error(data, message):
    with pytest.raises(AudioError, match=message):
        load_audio(data)


@pytest.mark.parametrize("rate", [8000, 16000, 48000], ids=lambda r: f"{r}Hz")
@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("encoding", ["s16le", "f32le"])
def test_decode_pcm(rate, channels, encoding):
    wave = tone(rate, channels)
    data = (np.round(wave * 32768).astype("<i2") if encoding == "s16le" else wave.astype("<f4")).tobytes()
    samples = decode_pcm(data, PcmFormat(sample_rate=rate, encoding=encoding, channels=channels))
    check_tone(samples, channels, 1e-3)


@pytest.mark.parametrize(
    "data,pcm,message",
    [
        pytest.param(b"\x00\x01\x02", PcmFormat(), "whole number", id="partial-frame"),
        pytest.param(b"\x00" * 6, PcmFormat(channels=2), "whole number", id="partial-stereo-frame"),
        pytest.param(b"\x00" * 8, PcmFormat(encoding="mulaw"), "unknown PCM encoding", id="encoding"),
        pytest.param(b"", PcmFormat(), "zero samples", id="empty"),
        pytest.param(np.full(4, np.nan, "<f4").tobytes(), PcmFormat(encoding="f32le"), "NaN", id="nan"),
    ],
)
def test_bad_pcm_raises_audio_error(data, pcm, message):
    with pytest.raises(AudioError, match=message):
        decode_pcm(data, pcm)
