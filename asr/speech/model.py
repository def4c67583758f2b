"""The speech LLM put together for inference: Whisper encoder -> projector -> LLM engine.

A speech model directory holds a trained adapter (``adapter.json`` + ``adapter.safetensors``, see
``asr.speech.adapter``); its info may name the LLM (``llm``) and Whisper (``whisper``) directories,
relative to it, and otherwise the embedded defaults are used. The LoRA adapters are folded into
the LLM's weights at load time, so decoding runs on plain weights.

Ownership: a ``SpeechModel`` holds only what every recording shares (weights, tokenizer, encoder,
projector) and is loaded once. Each recording or live session gets an engine (its paged KV cache,
runners and CUDA graphs) from ``open_engine``, sized for that recording, and its session from
``open_session``, which is always given its engine: one per recording by default, or one engine
shared by several live sessions (``EngineConfig.max_batch`` sequences). The caller encodes audio
(``encode_chunks``, in batches: ahead across a file's chunks, or across live streams); sessions
take embeddings only.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from asr.errors import ModelLoadError
from asr.llm.config import EngineConfig
from asr.llm.distance_cap import DistanceCap
from asr.llm.engine import LLMEngine, resolve_device
from asr.llm.loader import CONVERTED_FORMAT, load_model, load_tokenizer
from asr.llm.lora import merge_lora
from asr.llm.lora_adapter import LoraAdapter
from asr.llm.model import CausalLM
from asr.llm.quantize import quantize_linear_layers
from asr.speech.adapter import SpeechAdapter
from asr.speech.draft import AlternativeSearch, Draft
from asr.speech.draft_decoding import DraftDecoding
from asr.speech.longform import LongformSession
from asr.speech.projector import FrameStackProjector
from asr.speech.prompt import PromptIds
from asr.speech.repetition import LoopConfig
from asr.weights_cache import cache_root

log = logging.getLogger(__name__)

EMBEDDED_ADAPTER = Path(__file__).parent / "weights" / "default"
TOKENS_PER_SECOND_BOUND = 30  # audio (12.5/s) + transcript (<= 10/s) + prompt pieces, generous
CONTEXT_SLACK = 512  # the session's system prompt and the last chunk's overrun


def context_tokens(seconds: float) -> int:
    """Context positions that ``seconds`` of audio can take in a session (an upper bound)."""
    return int(seconds * TOKENS_PER_SECOND_BOUND) + CONTEXT_SLACK


@dataclass(frozen=True)
class EncodedChunk:
    """embeds: [audio_tokens, hidden] LLM input embeddings of one chunk; draft: Whisper's transcript
    of it with its confidences (``asr.speech.draft``), or None when the model reads no drafts."""

    embeds: torch.Tensor
    draft: Draft | None = None


@dataclass
class SpeechModel:
    """What every recording shares, loaded once. llm: the decoder (LoRA folded in); tokenizer: its
    tokenizer; encoder: frozen Whisper encoder (``AudioEncoder``); projector: frames -> LLM
    embeddings; prompt: token ids of the fixed prompt pieces; drafts: whether each chunk's Whisper
    draft goes into the context (the adapter was trained with them). No engine: see ``open_engine``."""

    llm: CausalLM
    tokenizer: object
    encoder: object
    projector: FrameStackProjector
    prompt: PromptIds
    adapter_info: dict
    drafts: bool = False

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's input-embedding dtype (and its engines' cache dtype)."""
        return self.llm.embed_tokens.weight.dtype

    def open_engine(self, config: EngineConfig, expected_seconds: float | None = None) -> LLMEngine:
        """A new engine over these weights: its own paged KV cache, runners and (CUDA) decode graphs,
        holding ``config.max_batch`` sequences of ``context_tokens(expected_seconds)`` positions
        (``config.max_context`` when ``expected_seconds`` is None). One per recording, sized for it;
        several live sessions may share one. The weights are shared, never copied."""
        if expected_seconds is not None:
            config = replace(config, max_context=context_tokens(expected_seconds))
        return LLMEngine(self.llm, config, self.tokenizer)

    def open_session(self, engine: LLMEngine, loop: LoopConfig = LoopConfig(),
                     distance_cap: DistanceCap | None = DistanceCap(),
                     draft_decoding: DraftDecoding = DraftDecoding(), defer_kept: int = 0) -> LongformSession:
        """A long-form session (one recording or live stream) in a new sequence of ``engine`` (from
        ``open_engine``); closing it frees its sequence, not the engine. defer_kept: chunks whose kept
        drafts may wait to be prefilled (``LongformSession.flush``)."""
        return LongformSession(self, engine, loop, distance_cap, draft_decoding, defer_kept)

    @torch.inference_mode()
    def encode_chunks(self, chunks: list[np.ndarray], search: AlternativeSearch | None = None,
                      margin_s: float | None = None) -> list[EncodedChunk]:
        """Per chunk (<= 30 s, 16 kHz float32) its LLM input embeddings and, with ``drafts``, its
        Whisper draft from the same encoder output (with other readings of the unsure ones, given
        ``search``); the chunks go through the encoder as one batch (on the CPU a batch of 4 costs
        ~25% less per chunk than one at a time), in 30-s windows, or with ``margin_s`` each in a window
        as long as the chunk plus that much silence (``AudioEncoder.window_samples``)."""
        dtype = self.projector.up.weight.dtype
        frames, drafts = self.encoder.encode_with_drafts(chunks, drafts=self.drafts, search=search,
                                                         margin_s=margin_s)
        embeds = [self.projector(chunk_frames[None].to(dtype))[0].to(self.dtype) for chunk_frames in frames]
        return [EncodedChunk(chunk_embeds, drafts[index] if self.drafts else None)
                for index, chunk_embeds in enumerate(embeds)]


def merged_weights_dir(adapter_dir: Path, llm_path: str, dtype: torch.dtype) -> Path | None:
    """Cache directory of the LLM's weights with this adapter's LoRA merged in, in ``dtype``
    (``asr.llm.loader.load_model``): named by a digest of the adapter's files, the LLM's weight
    files (path, size, time) and the dtype, so a retrained adapter or another LLM gets its own.
    None (no cache) when the LLM is itself a LoRA adapter directory, whose base is elsewhere."""
    if LoraAdapter.is_adapter_dir(llm_path):
        return None
    digest = hashlib.sha256(f"{CONVERTED_FORMAT}:{dtype}".encode())
    for name in ("adapter.json", "adapter.safetensors"):
        digest.update((adapter_dir / name).read_bytes())
    llm = Path(llm_path)
    for weights in sorted(llm.glob("*.safetensors")) if llm.is_dir() else [llm]:
        stat = weights.stat()
        digest.update(f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_root() / "merged" / digest.hexdigest()[:16]


def _resolve(base: Path, name: str | None) -> str | None:
    return str((base / name).resolve()) if name else None


def load_speech_model(model_dir: str | Path | None, engine_config: EngineConfig,
                      drafts: bool | None = None, parallel_calls: int = 1) -> SpeechModel:
    """Load a speech model directory (default: the embedded one) with the engine config's device,
    dtype and ``int8_weights``; no engine is made (``SpeechModel.open_engine``). drafts: put Whisper
    drafts into the context (None: as the adapter was trained, its ``info["drafts"]``); parallel_calls:
    encoder calls that may run at once from different threads (``AudioEncoder.load``)."""
    from asr.llm.embedded import embedded_llm_dir
    from asr.speech.encoder import AudioEncoder

    adapter_dir = Path(model_dir) if model_dir else EMBEDDED_ADAPTER
    if model_dir is None and not (adapter_dir / "adapter.json").exists():
        raise ModelLoadError(
            f"the embedded speech adapter is missing ({adapter_dir / 'adapter.json'}); reinstall the project "
            "(`bash scripts/setup.sh`), or train one with `python -m training.train_asr` and pass its "
            "directory with --model DIR")
    adapter = SpeechAdapter.load(adapter_dir)
    device, dtype = resolve_device(engine_config)
    llm_path = _resolve(adapter_dir, adapter.info.get("llm")) or str(embedded_llm_dir())
    model, hf_dir = load_model(
        llm_path,
        device,
        dtype,
        adapt_weights=lambda weights: merge_lora(weights, adapter.lora, adapter.lora_config),
        converted_dir=merged_weights_dir(adapter_dir, llm_path, dtype),
    )
    if engine_config.int8_weights:
        quantize_linear_layers(model)  # the weights' form is decided here, once, for every engine
    tokenizer = load_tokenizer(hf_dir)
    drafts = bool(adapter.info.get("drafts", False)) if drafts is None else drafts
    encoder = AudioEncoder.load(
        _resolve(adapter_dir, adapter.info.get("whisper")),
        device=device,
        dtype=torch.float16 if device.type == "cuda" else torch.float32,
        drafts=drafts,
        parallel_calls=parallel_calls,
    )
    projector = FrameStackProjector(adapter.projector_config)
    projector.load_state_dict(adapter.projector)
    projector.to(device).eval()
    log.info("speech model: adapter %s, LLM %s, %s %s", adapter_dir, llm_path, device, dtype)
    return SpeechModel(
        model, tokenizer, encoder, projector, PromptIds.from_tokenizer(tokenizer), adapter.info, drafts
    )
