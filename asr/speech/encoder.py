"""The frozen Whisper audio encoder feeding the speech LLM: 16 kHz chunks of <= 30 s -> frame features.

Whisper's encoder always sees 30 s (3000 log-mel frames, zero-padded) and gives 1500 frames, one per
20 ms (50 per second). Each chunk keeps the ceil(seconds * 50) frames that cover its real audio.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from asr.errors import AudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
# Log-mel hop 160 samples, then the encoder's second convolution has stride 2: one frame per 320 samples.
SAMPLES_PER_FRAME = 320
FRAMES_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_FRAME


def num_frames(num_samples: int) -> int:
    """Encoder frames covering ``num_samples`` of 16 kHz audio: ceil(seconds * 50)."""
    return math.ceil(num_samples / SAMPLES_PER_FRAME)


class AudioEncoder:
    """Whisper encoder (no gradients, eval mode) with its log-mel front end.

    On CUDA it computes in ``dtype`` (fp16/bf16); on the CPU always in float32 (half-precision
    matmuls there are slow). Outputs come from ``torch.no_grad`` (not inference mode), so a trainable
    projector can take them as inputs.
    """

    def __init__(self, encoder: torch.nn.Module, feature_extractor, device: torch.device, dtype: torch.dtype) -> None:
        self.encoder = encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.feature_extractor = feature_extractor
        self.device, self.dtype = device, dtype
        self.dim: int = encoder.config.d_model

    @classmethod
    def load(cls, model_dir: str | Path | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float16) -> "AudioEncoder":
        """Encoder of a Whisper directory (Hugging Face or CTranslate2; None: the embedded base)."""
        from transformers import WhisperFeatureExtractor

        from asr.speech.whisper_weights import load_whisper

        device = torch.device(device)
        dtype = dtype if device.type == "cuda" else torch.float32
        whisper = load_whisper(model_dir, dtype=dtype)
        extractor = WhisperFeatureExtractor(feature_size=whisper.config.num_mel_bins)
        return cls(whisper.get_encoder(), extractor, device, dtype)

    def log_mel(self, chunks: list[np.ndarray]) -> torch.Tensor:
        """chunks: float32 16 kHz [samples <= 480000] each -> [batch, mels, 3000] on the device, ``dtype``."""
        for index, chunk in enumerate(chunks):
            if chunk.ndim != 1 or not 0 < len(chunk) <= CHUNK_SAMPLES:
                raise AudioError(f"chunk {index} has shape {chunk.shape}; the encoder takes mono chunks of "
                                 f"1 to {CHUNK_SAMPLES} samples (<= {CHUNK_SECONDS} s at {SAMPLE_RATE} Hz): split "
                                 "long audio first")
        features = self.feature_extractor(
            [np.asarray(chunk, dtype=np.float32) for chunk in chunks], sampling_rate=SAMPLE_RATE,
            return_tensors="pt", device=str(self.device),
        ).input_features
        return features.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode_padded(self, chunks: list[np.ndarray], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """chunks -> (frames [batch, max_frames, dim] in ``dtype``, zero past each length;
        lengths [batch] int64), both on the device. Runs ``batch_size`` chunks at a time."""
        lengths = torch.tensor([num_frames(len(chunk)) for chunk in chunks], dtype=torch.int64)
        width = int(lengths.max()) if len(chunks) else 0
        frames = torch.zeros(len(chunks), width, self.dim, device=self.device, dtype=self.dtype)
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start : start + batch_size]
            hidden = self.encoder(self.log_mel(batch)).last_hidden_state  # [batch, 1500, dim]
            for offset, length in enumerate(lengths[start : start + batch_size].tolist()):
                frames[start + offset, :length] = hidden[offset, :length]
        return frames, lengths.to(self.device)

    def encode(self, chunks: list[np.ndarray], batch_size: int = 16) -> list[torch.Tensor]:
        """chunks (float32 16 kHz, <= 30 s each) -> per chunk [ceil(seconds * 50), dim] in ``dtype``."""
        frames, lengths = self.encode_padded(chunks, batch_size)
        return [frames[index, :length] for index, length in enumerate(lengths.tolist())]
