"""Frozen configurations of the LLM engine: model geometry, engine set-up, sampling."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from asr.attention.config import UniqueConfig, UniSparseConfig

AttentionMode = Literal["dense", "unique", "quest"]
PrefillMode = Literal["dense", "unisparse"]


@dataclass(frozen=True)
class ModelConfig:
    """Geometry of a Llama-family decoder (Llama, Mistral, Qwen2/2.5/3, SmolLM2), read from config.json.

    qkv_bias: Qwen2 adds biases to q/k/v projections; qk_norm: Qwen3 RMS-normalises q and k per head.
    max_context: the model's context limit (``max_position_embeddings``).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_context: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    eos_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs a model.

    attention: ``dense`` reads every KV page in decode; ``unique``/``quest`` read the top-k pages of
        ``sparse`` (its ``method`` is set from this field).
    prefill: ``dense`` attends every cached key when tokens are appended (SDPA); ``unisparse``
        attends, per query block, the key blocks ``unisparse`` chooses, once the context (cached plus
        new tokens) reaches ``unisparse.min_context`` (``asr.attention.prefill``).
    sparse: page size, token budget, sink/local pages and dense first layers (page_size is also the
        cache's page size in dense mode).
    device, dtype: ``None`` picks CUDA + bfloat16 when available, else the CPU in its native dtype
        (``asr.llm.cpu_defaults``: bfloat16 with AVX512-BF16/AMX, else float32).
    max_context: longest sequence served (default: the model's limit); longer contexts raise
        ContextLengthError.
    extend_context: allow ``max_context`` beyond the model's trained limit (RoPE is relative, so
        attention to recent tokens is unchanged; attention across more than the trained distance is
        out of distribution). Long-form speech sessions use it: an hour of audio is ~45k positions,
        kept within the trained distances by ``asr.llm.distance_cap``.
    num_pages: pages in the KV pool (default: ``max_batch`` sequences of ``max_context`` tokens, plus one
        scratch page for padded graph rows).
    max_batch: most sequences decoded together (CUDA graphs are captured up to this batch).
    prefill_chunk: new tokens per prefill forward (bounds the [chunk, context] attention mask).
    cuda_graphs: capture the decode step in CUDA graphs (CUDA only).
    int8_weights: CPU only, float32 model: int8 linear layers (``asr.llm.quantize``); faster than
        bfloat16 on a 2-core CPU but less accurate (speech dev set: RTF -15%, WER +5 points).
    """

    attention: AttentionMode = "dense"
    sparse: UniqueConfig = field(default_factory=UniqueConfig)
    prefill: PrefillMode = "dense"
    unisparse: UniSparseConfig = field(default_factory=UniSparseConfig)
    device: str | None = None
    dtype: str | None = None
    max_context: int | None = None
    extend_context: bool = False
    num_pages: int | None = None
    max_batch: int = 8
    prefill_chunk: int = 8192
    cuda_graphs: bool = True
    int8_weights: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ("dense", "unique", "quest"):
            raise ValueError(f"unknown attention {self.attention!r}; choose dense, unique or quest")
        if self.prefill not in ("dense", "unisparse"):
            raise ValueError(f"unknown prefill {self.prefill!r}; choose dense or unisparse")
        if self.unisparse.block_size % self.sparse.page_size:
            raise ValueError(
                f"the UniSparse block size {self.unisparse.block_size} must be a multiple of the page size "
                f"{self.sparse.page_size}"
            )
        if self.max_batch < 1 or self.prefill_chunk < 1:
            raise ValueError("max_batch and prefill_chunk must be positive")


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks tokens.

    temperature: 0 is greedy (argmax); otherwise softmax(logits / temperature) restricted to the
        smallest set of tokens whose probability reaches ``top_p``.
    max_tokens: most tokens generated; stop_token_ids: ending tokens (the model's EOS tokens are
        added unless ``ignore_eos``); the stop token itself is not returned.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_tokens < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and max_tokens >= 0")
