"""The speech LLM put together for inference: Whisper encoder -> projector -> LLM engine.

A speech model directory holds a trained adapter (``adapter.json`` + ``adapter.safetensors``, see
``asr.speech.adapter``); its info may name the LLM (``llm``) and Whisper (``whisper``) directories,
relative to it, and otherwise the embedded defaults are used. The LoRA adapters are folded into
the LLM's weights at load time, so decoding runs on plain weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asr.errors import ModelLoadError
from asr.llm.config import EngineConfig
from asr.llm.engine import LLMEngine, resolve_device
from asr.llm.loader import load_model
from asr.speech.adapter import SpeechAdapter
from asr.speech.lora import merge_lora
from asr.speech.projector import FrameStackProjector
from asr.speech.prompt import PromptIds

log = logging.getLogger(__name__)

EMBEDDED_ADAPTER = Path(__file__).parent / "weights" / "default"


@dataclass(frozen=True)
class EncodedChunk:
    """embeds: [audio_tokens, hidden] LLM input embeddings of one chunk; draft: Whisper's transcript
    of it (``asr.speech.draft``), or None when the model reads no drafts."""

    embeds: torch.Tensor
    draft: str | None = None


@dataclass
class SpeechModel:
    """encoder: frozen Whisper encoder (``AudioEncoder``); projector: frames -> LLM embeddings;
    engine: the LLM with its paged cache; prompt: token ids of the fixed prompt pieces; drafts:
    whether each chunk's Whisper draft goes into the context (the adapter was trained with them)."""

    encoder: object
    projector: FrameStackProjector
    engine: LLMEngine
    prompt: PromptIds
    adapter_info: dict
    drafts: bool = False

    @torch.inference_mode()
    def encode_chunks(self, chunks: list[np.ndarray]) -> list[EncodedChunk]:
        """Per chunk (<= 30 s, 16 kHz float32) its LLM input embeddings and, with ``drafts``, its
        Whisper draft from the same encoder output; the chunks go through the encoder as one batch
        (on the CPU a batch of 4 costs ~25% less per chunk than one at a time)."""
        dtype = self.projector.up.weight.dtype
        frames, drafts = self.encoder.encode_with_drafts(chunks, drafts=self.drafts)
        embeds = [self.projector(chunk_frames[None].to(dtype))[0].to(self.engine.dtype) for chunk_frames in frames]
        return [EncodedChunk(chunk_embeds, drafts[index] if self.drafts else None)
                for index, chunk_embeds in enumerate(embeds)]


def _resolve(base: Path, name: str | None) -> str | None:
    return str((base / name).resolve()) if name else None


def load_speech_model(model_dir: str | Path | None, engine_config: EngineConfig,
                      drafts: bool | None = None) -> SpeechModel:
    """Load a speech model directory (default: the embedded one) onto the engine config's device.
    drafts: put Whisper drafts into the context (None: as the adapter was trained, ``info["drafts"]``)."""
    from transformers import AutoTokenizer

    from asr.llm.embedded import embedded_llm_dir
    from asr.speech.encoder import AudioEncoder

    adapter_dir = Path(model_dir) if model_dir else EMBEDDED_ADAPTER
    if model_dir is None and not (adapter_dir / "adapter.json").exists():
        raise ModelLoadError(
            "this version ships no trained speech adapter yet; train one with training/train_asr.py "
            "and pass its directory with --model DIR")
    adapter = SpeechAdapter.load(adapter_dir)
    device, dtype = resolve_device(engine_config)
    llm_path = _resolve(adapter_dir, adapter.info.get("llm")) or str(embedded_llm_dir())
    model, hf_dir = load_model(llm_path, device, dtype,
                               adapt_weights=lambda weights: merge_lora(weights, adapter.lora, adapter.lora_config))
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    engine = LLMEngine(model, engine_config, tokenizer)
    drafts = bool(adapter.info.get("drafts", False)) if drafts is None else drafts
    encoder = AudioEncoder.load(_resolve(adapter_dir, adapter.info.get("whisper")), device=device,
                                dtype=torch.float16 if device.type == "cuda" else torch.float32, drafts=drafts)
    projector = FrameStackProjector(adapter.projector_config)
    projector.load_state_dict(adapter.projector)
    projector.to(device).eval()
    log.info("speech model: adapter %s, LLM %s, %s %s", adapter_dir, llm_path, device, dtype)
    return SpeechModel(encoder, projector, engine, PromptIds.from_tokenizer(tokenizer), adapter.info, drafts)
