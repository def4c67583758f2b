"""The frozen Whisper audio encoder feeding the speech LLM: 16 kHz chunks of <= 30 s -> frame features.

Whisper's encoder always sees 30 s (3000 log-mel frames, zero-padded) and gives 1500 frames, one per
20 ms (50 per second). Each chunk keeps the ceil(seconds * 50) frames that cover its real audio.

Two backends run the same weights on the same log-mel features (Hugging Face's feature extractor):
``TorchEncoder`` (the Hugging Face ``WhisperEncoder``; CUDA, training, and the fallback) and
``Ct2Encoder`` (CTranslate2's encoder, faster on the CPU: in float32 0.41 s against 0.52 s per 30 s
window on 2 cores, frames equal to ~2e-6 relative RMS; by default in int8, as faster-whisper runs
it: long-form real-time factor 0.238 against 0.253 with dev-set WER within run-to-run noise, see
BENCHMARKS.md). ``AudioEncoder.load`` picks CTranslate2 on the CPU when it imports and the weights
are a CTranslate2 model (the embedded one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from asr.errors import AudioError, ModelLoadError
from asr.speech.audio import SAMPLE_RATE
from asr.speech.draft import AlternativeSearch, Ct2Drafter, Draft, Drafter, HfDrafter

log = logging.getLogger(__name__)

CHUNK_SECONDS = 30
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
# Log-mel hop 160 samples, then the encoder's second convolution has stride 2: one frame per 320 samples.
HOP_SAMPLES = 160
SAMPLES_PER_FRAME = 2 * HOP_SAMPLES
FRAMES_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_FRAME
WINDOW_STEP_S = 2.5  # short encoder windows come in whole steps of this (5, 7.5, ... 30 s)
WINDOW_STEP_SAMPLES = int(WINDOW_STEP_S * SAMPLE_RATE)
MIN_WINDOW_SAMPLES = 2 * WINDOW_STEP_SAMPLES  # the shortest short window


def num_frames(num_samples: int) -> int:
    """Encoder frames covering ``num_samples`` of 16 kHz audio: ceil(seconds * 50)."""
    return math.ceil(num_samples / SAMPLES_PER_FRAME)


Backend = Literal["auto", "torch", "ctranslate2"]
CT2_COMPUTE_TYPE = "int8"  # the CTranslate2 backend's default precision
# (log-mel [batch, mels, 3000] float32, valid mel frames per chunk) -> edited log-mel, same shape
FeaturesTransform = Callable[[torch.Tensor, list[int]], torch.Tensor]


class EncoderBackend(Protocol):
    """Runs the Whisper encoder: log-mel [batch, mels, 3000] float32 -> [batch, 1500, dim]."""

    name: str
    dim: int

    def __call__(self, features: torch.Tensor) -> torch.Tensor: ...


class TorchEncoder:
    """Hugging Face ``WhisperEncoder`` (frozen, eval mode) on ``device`` in ``dtype``; returns the
    hidden states there, in ``dtype``."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.module = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype
        self.dim: int = module.config.d_model

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.module(features.to(device=self.device, dtype=self.dtype)).last_hidden_state


class Ct2Encoder:
    """CTranslate2's Whisper encoder on the CPU in ``compute_type`` ("int8": int8 matmul weights;
    "float32": weights widened from their stored fp16 once, as the torch backend does); returns
    float32 CPU tensors. ``threads`` per call; ``parallel_calls``: calls from that many Python threads
    may run at once (CTranslate2's ``inter_threads``: workers over one copy of the weights)."""

    name = "ctranslate2"

    def __init__(self, ct2_dir: Path, threads: int, compute_type: str, parallel_calls: int = 1) -> None:
        import ctranslate2

        from asr.speech.ct2_reader import read_ct2

        self.model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type=compute_type,
                                                intra_threads=threads, inter_threads=parallel_calls)
        self.dim: int = read_ct2(ct2_dir / "model.bin").variables["encoder/layer_norm/gamma"].shape[0]
        self.num_mels: int = self.model.n_mels

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        import ctranslate2

        storage = ctranslate2.StorageView.from_array(features.cpu().float().contiguous().numpy())
        return torch.from_numpy(np.array(self.model.encode(storage)))


def _ct2_dir(model_dir: str | Path | None) -> Path | None:
    """The CTranslate2 directory holding ``model_dir``'s weights (None: the embedded base), or None
    when it is a Hugging Face directory."""
    from asr.speech.whisper_weights import faster_whisper_dir

    if model_dir is None:
        return faster_whisper_dir()
    return Path(model_dir) if (Path(model_dir) / "model.bin").is_file() else None


def _ct2_importable() -> bool:
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return False
    return True


class AudioEncoder:
    """Whisper encoder (no gradients) with its log-mel front end, on a backend (``TorchEncoder`` or
    ``Ct2Encoder``).

    On CUDA it computes in ``dtype`` (fp16/bf16); on the CPU always in float32 (half-precision
    matmuls there are slow). Outputs carry no graph (``torch.no_grad``, not inference mode), so a
    trainable projector can take them as inputs.
    """

    def __init__(self, backend: EncoderBackend, feature_extractor, device: torch.device, dtype: torch.dtype,
                 drafter: Drafter | None = None) -> None:
        self.backend, self.drafter = backend, drafter
        self.feature_extractor = feature_extractor
        self.device, self.dtype = device, dtype
        self.dim: int = backend.dim

    @classmethod
    def load(cls, model_dir: str | Path | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float16, backend: Backend = "auto",
             ct2_compute_type: str = CT2_COMPUTE_TYPE, drafts: bool = False,
             parallel_calls: int = 1) -> AudioEncoder:
        """Encoder of a Whisper directory (Hugging Face or CTranslate2; None: the embedded base).

        backend: "auto" takes CTranslate2 on the CPU when ``ctranslate2`` imports and the weights are a
        CTranslate2 directory (the embedded base is one), else torch; "ctranslate2" insists (CPU only);
        "torch" is the Hugging Face encoder. ct2_compute_type: CTranslate2's precision ("int8" or
        "float32"). drafts: also load Whisper's decoder, for ``draft`` and ``encode_with_drafts``
        (``asr.speech.draft``). parallel_calls: how many calls may run at once from different threads
        (CTranslate2 only: the torch modules take concurrent calls as they are).
        """
        from transformers import WhisperFeatureExtractor

        device = torch.device(device)
        dtype = dtype if device.type == "cuda" else torch.float32
        ct2_dir = _ct2_dir(model_dir) if device.type == "cpu" and backend != "torch" else None
        if backend == "ctranslate2" and (ct2_dir is None or not _ct2_importable()):
            raise ModelLoadError(
                f"the CTranslate2 encoder needs the CPU, the ctranslate2 package "
                f"(`pip install ctranslate2`) and a CTranslate2 Whisper directory; got device "
                f"{device} and {model_dir}: use backend='torch' or 'auto'"
            )
        drafter: Drafter | None = None
        if ct2_dir is not None and _ct2_importable():
            encoder: EncoderBackend = Ct2Encoder(ct2_dir, threads=torch.get_num_threads(),
                                                 compute_type=ct2_compute_type, parallel_calls=parallel_calls)
            num_mels = encoder.num_mels
            if drafts:
                from tokenizers import Tokenizer

                drafter = Ct2Drafter(encoder.model, Tokenizer.from_file(str(ct2_dir / "tokenizer.json")))
        else:
            from transformers import WhisperTokenizer

            from asr.speech.whisper_weights import load_whisper

            whisper = load_whisper(model_dir, dtype=dtype)
            encoder, num_mels = (
                TorchEncoder(whisper.get_encoder(), device, dtype),
                whisper.config.num_mel_bins,
            )
            if drafts:
                whisper.to(device=device, dtype=dtype).requires_grad_(False)
                drafter = HfDrafter(whisper, WhisperTokenizer.from_pretrained(str(whisper.name_or_path)))
        log.info("audio encoder: %s backend on %s%s", encoder.name, device, " with drafts" if drafter else "")
        return cls(encoder, WhisperFeatureExtractor(feature_size=num_mels), device, dtype, drafter)

    @property
    def takes_short_windows(self) -> bool:
        """Whether the backend encodes windows shorter than 30 s (CTranslate2 does, slicing its
        position embeddings as whisper.cpp's ``audio_ctx``; Hugging Face's encoder insists on 3000)."""
        return self.backend.name == "ctranslate2"

    def window_samples(self, chunks: list[np.ndarray], margin_s: float | None) -> int:
        """The encoder window for ``chunks``: 30 s, or (``margin_s`` given and the backend able) the
        longest chunk plus ``margin_s`` of silence, rounded up to a whole ``WINDOW_STEP_S``, at least
        ``MIN_WINDOW_SAMPLES``, at most 30 s. The few window lengths keep memory flat: with a new
        length per call CTranslate2's process grew by ~2.7 MiB per call (120 calls), with eleven
        lengths it does not."""
        if margin_s is None or not self.takes_short_windows:
            return CHUNK_SAMPLES
        longest = max(len(chunk) for chunk in chunks) + int(margin_s * SAMPLE_RATE)
        steps = max(MIN_WINDOW_SAMPLES // WINDOW_STEP_SAMPLES, math.ceil(longest / WINDOW_STEP_SAMPLES))
        return min(CHUNK_SAMPLES, steps * WINDOW_STEP_SAMPLES)

    def log_mel(self, chunks: list[np.ndarray], window_samples: int = CHUNK_SAMPLES) -> torch.Tensor:
        """chunks: float32 16 kHz [samples <= 480000] each -> [batch, mels, window_samples / 160]
        float32 on the device (zero-padded to ``window_samples``: 30 s unless told)."""
        for index, chunk in enumerate(chunks):
            if chunk.ndim != 1 or not 0 < len(chunk) <= CHUNK_SAMPLES:
                raise AudioError(
                    f"chunk {index} has shape {chunk.shape}; the encoder takes mono chunks of "
                    f"1 to {CHUNK_SAMPLES} samples (<= {CHUNK_SECONDS} s at {SAMPLE_RATE} Hz): split "
                    "long audio first"
                )
        return self.feature_extractor(
            [np.asarray(chunk, dtype=np.float32) for chunk in chunks], sampling_rate=SAMPLE_RATE,
            return_tensors="pt", device=str(self.device), max_length=window_samples,
        ).input_features.to(device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def draft(self, chunks: list[np.ndarray], batch_size: int = 16,
              margin_s: float | None = None) -> list[Draft]:
        """Whisper's draft transcript of each chunk (training: drafts of the un-augmented log-mel), from
        30-s windows, or with ``margin_s`` from a window as long as the chunk plus that much silence
        (``window_samples``): a 5-s chunk in a 10-s window costs about a fifth of the encoder time
        (live captions; the accuracy cost: eval/draft_window.py)."""
        drafts: list[Draft | None] = [None] * len(chunks)
        for indices, hidden in self._windows(chunks, batch_size, margin_s=margin_s):
            for index, draft in zip(indices, self._drafts(hidden, [chunks[i] for i in indices])):
                drafts[index] = draft
        return drafts

    def _windows(self, chunks: list[np.ndarray], batch_size: int,
                 features_transform: FeaturesTransform | None = None, margin_s: float | None = None):
        """Yield (chunk indices, their encoder output [batch, window frames, dim]) per batch of at most
        ``batch_size``; windows of 30 s (1500 frames, batches in order) unless ``margin_s`` asks for
        short ones: then each chunk gets its own window (``window_samples``), and only chunks of one
        window length share a batch (on the CPU batching saves little: four 5-10-s windows in one
        batch cost ~80-85% of four single calls, so a long chunk must not stretch the others'
        windows; and a chunk's frames never depend on its batch)."""
        groups: dict[int, list[int]] = {}
        for index, chunk in enumerate(chunks):
            groups.setdefault(self.window_samples([chunk], margin_s), []).append(index)
        for window, members in groups.items():
            for start in range(0, len(members), batch_size):
                indices = members[start : start + batch_size]
                batch = [chunks[i] for i in indices]
                features = self.log_mel(batch, window)
                if features_transform is not None:
                    features = features_transform(features, [len(chunk) // HOP_SAMPLES for chunk in batch])
                yield indices, self.backend(features)

    def _drafts(self, windows: torch.Tensor, chunks: list[np.ndarray],
                search: AlternativeSearch | None = None) -> list[Draft]:
        if self.drafter is None:
            raise ModelLoadError(
                "this encoder was loaded without Whisper's decoder: load it with drafts=True"
            )
        return self.drafter(windows, [len(chunk) / SAMPLE_RATE for chunk in chunks], search)

    @torch.no_grad()
    def encode_padded(
        self,
        chunks: list[np.ndarray],
        batch_size: int = 16,
        features_transform: FeaturesTransform | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """chunks -> (frames [batch, max_frames, dim] in ``dtype``, zero past each length;
        lengths [batch] int64), both on the device. Runs ``batch_size`` chunks at a time;
        ``features_transform`` (training augmentation) edits each batch's log-mel first."""
        frames, lengths, _ = self._encode(chunks, batch_size, features_transform, drafts=False, search=None)
        return frames, lengths

    def _encode(self, chunks: list[np.ndarray], batch_size: int, features_transform: FeaturesTransform | None,
                drafts: bool, search: AlternativeSearch | None = None, margin_s: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[Draft]]:
        lengths = torch.tensor([num_frames(len(chunk)) for chunk in chunks], dtype=torch.int64)
        width = int(lengths.max()) if len(chunks) else 0
        frames = torch.zeros(len(chunks), width, self.dim, device=self.device, dtype=self.dtype)
        drafted: list[Draft | None] = [None] * len(chunks) if drafts else []
        for indices, hidden in self._windows(chunks, batch_size, features_transform, margin_s):
            for row, index in enumerate(indices):
                frames[index, : lengths[index]] = hidden[row, : lengths[index]]
            if drafts:
                for index, draft in zip(indices, self._drafts(hidden, [chunks[i] for i in indices], search)):
                    drafted[index] = draft
        return frames, lengths.to(self.device), drafted

    def encode(self, chunks: list[np.ndarray], batch_size: int = 16) -> list[torch.Tensor]:
        """chunks (float32 16 kHz, <= 30 s each) -> per chunk [ceil(seconds * 50), dim] in ``dtype``."""
        return self.encode_with_drafts(chunks, batch_size, drafts=False)[0]

    @torch.no_grad()
    def encode_with_drafts(self, chunks: list[np.ndarray], batch_size: int = 16, drafts: bool = True,
                           search: AlternativeSearch | None = None,
                           margin_s: float | None = None) -> tuple[list[torch.Tensor], list[Draft]]:
        """``encode`` and, from the same encoder output, Whisper's draft of each chunk (empty list
        when ``drafts`` is False), with other readings of the unsure ones when ``search`` is given;
        windows of 30 s, or short ones with ``margin_s`` (``window_samples``)."""
        frames, lengths, drafted = self._encode(chunks, batch_size, None, drafts, search, margin_s)
        return [frames[index, :length] for index, length in enumerate(lengths.tolist())], drafted
