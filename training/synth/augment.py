"""On-the-fly waveform augmentation for clean synthetic speech: noise, reverb, speed, gain.

Every function takes ``wave: [samples] float32`` and a ``numpy.random.Generator`` and returns a new
float32 array; all but ``speed_perturb`` keep the length. ``augment_waveform`` chains them with
per-step probabilities, as the training loop calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, resample_poly

NOISE_COLORS = ("white", "pink", "brown")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each step. SNRs in dB, RT60 in seconds, gains in dB."""

    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 35.0)
    reverb_prob: float = 0.3
    rt60: tuple[float, float] = (0.15, 0.8)
    speed_prob: float = 0.3
    speeds: tuple[float, ...] = (0.9, 0.95, 1.05, 1.1)
    gain_prob: float = 0.5
    gain_db: tuple[float, float] = (-20.0, 3.0)


def colored_noise(num_samples: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """[num_samples] float32 unit-RMS noise with a 1/f^k power spectrum (white k=0, pink 1, brown 2)."""
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}[color]
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequencies = np.fft.rfftfreq(num_samples)
    frequencies[0] = frequencies[1] if num_samples > 1 else 1.0
    noise = np.fft.irfft(spectrum / frequencies ** (exponent / 2), n=num_samples)
    noise -= noise.mean()
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def add_noise(wave: np.ndarray, snr_db: float, color: str, rng: np.random.Generator) -> np.ndarray:
    """Add colored noise so that signal power / noise power equals ``snr_db``."""
    signal_power = float(np.mean(wave.astype(np.float64) ** 2))
    noise = colored_noise(len(wave), color, rng) * np.sqrt(signal_power / 10 ** (snr_db / 10))
    return (wave + noise).astype(np.float32)


def room_impulse_response(sample_rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """[taps] float32 synthetic RIR: a direct path, sparse early reflections, and exponentially
    decaying noise whose energy falls 60 dB in ``rt60`` seconds; unit peak."""
    taps = int(rt60 * sample_rate)
    decay = np.exp(-6.9078 * np.arange(taps) / taps)  # ln(1000): amplitude -60 dB at rt60
    response = rng.standard_normal(taps) * decay * 0.3
    early = rng.integers(int(0.002 * sample_rate), int(0.05 * sample_rate), size=8)
    response[early] += rng.uniform(0.2, 0.7, size=8) * rng.choice((-1, 1), size=8)
    response[0] = 1.0
    return (response / np.abs(response).max()).astype(np.float32)


def reverberate(wave: np.ndarray, sample_rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room; same length, same peak level as the input."""
    wet = fftconvolve(wave, room_impulse_response(sample_rate, rt60, rng))[: len(wave)]
    peak_in, peak_out = np.abs(wave).max(), np.abs(wet).max()
    return (wet * (peak_in / peak_out if peak_out > 0 else 1.0)).astype(np.float32)


def speed_perturb(wave: np.ndarray, speed: float) -> np.ndarray:
    """Play ``speed`` times faster by resampling (pitch moves with it, as in Kaldi's speed perturbation);
    length becomes about len / speed."""
    up = 100
    down = round(up * speed)
    return resample_poly(wave, up, down).astype(np.float32)


def apply_gain(wave: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale by ``gain_db`` and clip to [-1, 1]."""
    return np.clip(wave * 10 ** (gain_db / 20), -1.0, 1.0).astype(np.float32)


def augment_waveform(wave: np.ndarray, sample_rate: int, rng: np.random.Generator,
                     config: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Random chain: speed, reverb, noise, gain (each with its probability); [samples] float32."""
    wave = wave.astype(np.float32)
    if rng.random() < config.speed_prob:
        wave = speed_perturb(wave, float(rng.choice(config.speeds)))
    if rng.random() < config.reverb_prob:
        wave = reverberate(wave, sample_rate, float(rng.uniform(*config.rt60)), rng)
    if rng.random() < config.noise_prob:
        wave = add_noise(wave, float(rng.uniform(*config.snr_db)), str(rng.choice(NOISE_COLORS)), rng)
    if rng.random() < config.gain_prob:
        wave = apply_gain(wave, float(rng.uniform(*config.gain_db)))
    return wave
