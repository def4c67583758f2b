"""Outside reference: Whisper decoding with its own decoder through transformers (``generate``).

The second reference row of the WER table beside faster-whisper: same weights (the embedded Whisper
base, or any Whisper directory ``load_whisper`` reads), decoded by Hugging Face's Whisper generation
instead of CTranslate2. Inputs up to 30 s are one window; longer ones go through transformers'
sequential long-form generation (30 s windows advanced by the predicted timestamps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asr.errors import AudioError
from asr.speech.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

# Whisper's window: 30 s = 3000 log-mel frames (hop 160 samples).
WINDOW_FRAMES = 3000


@dataclass(frozen=True)
class ReferenceOptions:
    """Decoding settings of the reference.

    num_beams: 1, greedy (Hugging Face's own default for Whisper). Beam 5 (faster-whisper's row)
        costs about 2x the time on the CPU here and gave the same words on the utterances tried.
    language / task: Whisper's language and task tokens (English transcription).
    condition_on_prev_tokens: long-form only; False (each window decoded on its own) avoids the
        repetition loops that conditioning can carry from window to window.
    """

    num_beams: int = 1
    language: str = "en"
    task: str = "transcribe"
    condition_on_prev_tokens: bool = False


class WhisperReference:
    """``WhisperForConditionalGeneration`` + feature extractor + tokenizer of one Whisper directory.

    model_dir: Hugging Face or CTranslate2 Whisper directory; None: the embedded Whisper base.
    device: "cpu" (float32) or a CUDA device (float16).
    """

    def __init__(self, model_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 options: ReferenceOptions = ReferenceOptions()) -> None:
        from transformers import WhisperFeatureExtractor, WhisperTokenizer

        from asr.speech.whisper_weights import load_whisper

        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.options = options
        self.model = load_whisper(model_dir, dtype=self.dtype).to(self.device)
        # The Hugging Face directory load_whisper read (CTranslate2 ones are converted into the cache
        # first) also holds the tokenizer and the feature-extractor config.
        hf_dir = Path(self.model.name_or_path)
        self.tokenizer = WhisperTokenizer.from_pretrained(str(hf_dir))
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(str(hf_dir))

    def features(self, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [samples] float32 16 kHz -> (input_features [1, mels, max(3000, frames)] in the model's
        dtype, attention_mask [1, max(3000, frames)] int); padded to one 30 s window when shorter."""
        if audio.ndim != 1 or audio.size == 0:
            raise AudioError(f"audio has shape {audio.shape}; the reference takes one mono 16 kHz recording")
        long = audio.size > WINDOW_FRAMES * self.feature_extractor.hop_length
        inputs = self.feature_extractor(
            np.asarray(audio, dtype=np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt",
            return_attention_mask=True, truncation=not long, padding="longest" if long else "max_length",
        )
        return (inputs.input_features.to(self.device, self.dtype), inputs.attention_mask.to(self.device))

    @torch.inference_mode()
    def transcribe(self, audio: np.ndarray) -> str:
        """audio [samples] float32 16 kHz mono, any length -> transcript text (stripped)."""
        input_features, attention_mask = self.features(audio)
        long = input_features.shape[-1] > WINDOW_FRAMES
        tokens = self.model.generate(
            input_features, attention_mask=attention_mask, language=self.options.language,
            task=self.options.task, num_beams=self.options.num_beams, return_timestamps=long,
            condition_on_prev_tokens=self.options.condition_on_prev_tokens if long else None,
        )
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=True)[0].strip()
