"""The LLM engine: sequences that grow by appended segments (token ids or embeddings) and generate.

A speech session keeps ONE sequence: ``append(seq, embeds=audio)``, ``generate(seq, ...)``, append the
next chunk, and so on. ``generate_batch`` serves independent requests together. Invariant: after
``append`` or ``generate`` the cache holds every position of the sequence (appended rows and returned
tokens; a stop token is returned to nobody and not cached) and ``seq.next_logits`` predicts the next one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence as Seq
from dataclasses import replace
from pathlib import Path

import torch

from asr.attention import CacheShape, PagedKVCache, UniqueConfig
from asr.errors import ContextLengthError
from asr.llm.config import EngineConfig, ModelConfig, SamplingParams
from asr.llm.distance_cap import DistanceCap, cap_distances
from asr.llm.loader import load_model
from asr.llm.model import CausalLM
from asr.llm.quantize import quantize_linear_layers
from asr.llm.runner import ModelRunner
from asr.llm.sampler import sample
from asr.llm.sequence import Sequence

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(config: EngineConfig) -> tuple[torch.device, torch.dtype]:
    """The engine's device and dtype: CUDA + bfloat16 when available, else CPU + float32."""
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[config.dtype] if config.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


class LLMEngine:
    """A CausalLM, its tokenizer (optional), a paged KV cache and a runner."""

    def __init__(self, model: CausalLM, config: EngineConfig = EngineConfig(), tokenizer=None) -> None:
        if config.int8_weights:
            quantize_linear_layers(model)
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.model_config: ModelConfig = model.config
        self.device = model.embed_tokens.weight.device
        self.dtype = model.embed_tokens.weight.dtype
        self.max_context = config.max_context or self.model_config.max_context
        if not config.extend_context:
            self.max_context = min(self.max_context, self.model_config.max_context)
        page_size = config.sparse.page_size
        # max_batch full sequences plus the scratch page
        num_pages = config.num_pages or config.max_batch * math.ceil(self.max_context / page_size) + 1
        mc = self.model_config
        shape = CacheShape(mc.num_layers, num_pages, page_size, mc.num_kv_heads, mc.head_dim)
        self.cache = PagedKVCache(shape, self.dtype, self.device)
        self._scratch_seq = self.cache.add_sequence()  # padded CUDA-graph rows write here
        self.cache.reserve([self._scratch_seq], [1])
        self._runners: dict[UniqueConfig | None, ModelRunner] = {}
        self.set_attention(config.attention, config.sparse)

    def set_attention(self, attention: str, sparse: UniqueConfig | None = None) -> None:
        """Switch decode attention (``dense``, ``unique``, ``quest``) over the same cache and sequences;
        ``sparse`` (budget, sink/local pages...) must keep the cache's page size. Runners (and their CUDA
        graphs) are kept per setting, so switching back is free."""
        sparse = sparse or self.config.sparse
        if sparse.page_size != self.cache.page_size:
            raise ValueError(f"page_size {sparse.page_size} differs from the cache's {self.cache.page_size}")
        choice = None if attention == "dense" else replace(sparse, method=attention)
        if choice not in self._runners:
            config = self.config
            self._runners[choice] = ModelRunner(
                self.model, self.cache, choice, self.max_context, config.max_batch, config.prefill_chunk,
                config.cuda_graphs, self._scratch_seq,
            )
        self.runner = self._runners[choice]

    @classmethod
    def from_pretrained(cls, path: str | Path, config: EngineConfig = EngineConfig()) -> "LLMEngine":
        """Load a local Hugging Face directory or GGUF file (model and tokenizer); no hub access."""
        from transformers import AutoTokenizer

        device, dtype = resolve_device(config)
        model, model_dir = load_model(path, device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        return cls(model, config, tokenizer)

    # ---------------------------------------------------------------- sequences
    def new_sequence(self) -> Sequence:
        return Sequence(self.cache.add_sequence())

    def free(self, seq: Sequence) -> None:
        """Give a sequence's pages back."""
        self.cache.free_sequence(seq.seq_id)
        self._invalidate_page_tables()

    def _invalidate_page_tables(self) -> None:
        for runner in self._runners.values():
            runner.invalidate_page_table()

    def truncate(self, seq: Sequence, length: int) -> None:
        """Roll a sequence back to its first ``length`` positions (next_logits is cleared: append next)."""
        self.cache.truncate(seq.seq_id, length)
        self._invalidate_page_tables()
        seq.num_tokens, seq.next_logits = length, None
        del seq.token_ids[length:]
        seq.collapsed_pages = min(seq.collapsed_pages, length // self.cache.page_size)

    def cap_distances(self, seq: Sequence, cap: DistanceCap) -> bool:
        """Keep ``seq``'s keys within ``cap`` of its next position (``asr.llm.distance_cap``); True if
        old pages were moved."""
        return cap_distances(self.cache, seq, self.model.rotary.inv_freq, cap)

    @torch.inference_mode()
    def embed_tokens(self, token_ids: Seq[int] | torch.Tensor) -> torch.Tensor:
        """The model's input embeddings of ``token_ids``: [n, hidden_size] in the engine's dtype."""
        ids = torch.as_tensor(token_ids, dtype=torch.int64, device=self.device)
        return self.model.embed_tokens(ids)

    def append(self, seq: Sequence, token_ids: Seq[int] | None = None, embeds: torch.Tensor | None = None) -> None:
        """Prefill a segment at the end of ``seq``: token ids, or input embeddings [n, hidden_size]."""
        if (token_ids is None) == (embeds is None):
            raise ValueError("append takes exactly one of token_ids or embeds")
        count = len(token_ids) if token_ids is not None else embeds.shape[0]
        if count == 0:
            return
        self.check_fits(seq.num_tokens + count)
        rows = self.embed_tokens(token_ids) if token_ids is not None else embeds
        seq.next_logits = self.runner.prefill(seq.seq_id, rows)
        seq.token_ids.extend(list(token_ids) if token_ids is not None else [None] * count)
        seq.num_tokens += count

    def check_fits(self, length: int) -> None:
        if length > self.max_context:
            raise ContextLengthError(
                f"the context needs {length} tokens but this engine's limit is {self.max_context} "
                f"(model limit {self.model_config.max_context}); shorten the input by "
                f"{length - self.max_context} tokens, or use a model with a longer context"
            )

    # ---------------------------------------------------------------- generation
    def generate(
        self, seq: Sequence, params: SamplingParams = SamplingParams(), on_token: Callable[[int], None] | None = None
    ) -> list[int]:
        """Generate after what ``seq`` holds; ``on_token(token_id)`` streams each returned token."""
        callback = (lambda _index, token: on_token(token)) if on_token else None
        return self.generate_many([seq], [params], callback)[0]

    def generate_batch(
        self,
        prompts: Seq[Seq[int]],
        params: SamplingParams | Seq[SamplingParams] = SamplingParams(),
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """Independent requests of any lengths, decoded together in waves of ``max_batch``.

        on_token(request_index, token_id) streams. Returns the generated ids of each request.
        """
        all_params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        outputs: list[list[int]] = []
        for begin in range(0, len(prompts), self.config.max_batch):
            wave = range(begin, min(begin + self.config.max_batch, len(prompts)))
            seqs = [self.new_sequence() for _ in wave]
            try:
                for seq, index in zip(seqs, wave):
                    self.append(seq, token_ids=prompts[index])
                callback = (lambda i, token, b=begin: on_token(b + i, token)) if on_token else None
                outputs.extend(self.generate_many(seqs, [all_params[i] for i in wave], callback))
            finally:
                for seq in seqs:
                    self.free(seq)
        return outputs

    def generate_many(
        self,
        seqs: list[Sequence],
        params: list[SamplingParams],
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """Decode several existing sequences together (at most ``max_batch``); one host sync per step."""
        if len(seqs) > self.config.max_batch:
            raise ValueError(f"{len(seqs)} sequences exceed max_batch={self.config.max_batch}")
        if any(seq.next_logits is None for seq in seqs):
            raise ValueError("append a prompt to every sequence before generating")
        eos = set(self.model_config.eos_token_ids)
        stops = [set(p.stop_token_ids) | (set() if p.ignore_eos else eos) for p in params]
        outputs: list[list[int]] = [[] for _ in seqs]
        generator = self._generator(params)
        active = [i for i, p in enumerate(params) if p.max_tokens > 0]
        while active:
            logits = torch.stack([seqs[i].next_logits for i in active])
            all_greedy = all(params[i].temperature == 0 for i in active)
            if all_greedy:
                tokens = logits.argmax(dim=-1).tolist()  # the step's one host sync
            else:
                temperatures = torch.tensor([params[i].temperature for i in active], device=self.device)
                top_ps = torch.tensor([params[i].top_p for i in active], device=self.device)
                tokens = sample(logits, temperatures, top_ps, False, generator).tolist()
            feed: list[int] = []
            for i, token in zip(active, tokens):
                if token in stops[i]:
                    continue
                outputs[i].append(token)
                if on_token:
                    on_token(i, token)
                if seqs[i].num_tokens < self.max_context:
                    feed.append(i)
            if not feed:
                break
            fed_tokens = torch.tensor([outputs[i][-1] for i in feed], dtype=torch.int64, device=self.device)
            next_logits = self.runner.decode([seqs[i].seq_id for i in feed], fed_tokens)
            for row, i in enumerate(feed):
                seq = seqs[i]
                seq.num_tokens += 1
                seq.token_ids.append(outputs[i][-1])
                seq.next_logits = next_logits[row]
                read, dense = self.runner.pages_read(seq.num_tokens)
                seq.pages_read += read
                seq.pages_dense += dense
            active = [i for i in feed if len(outputs[i]) < params[i].max_tokens and seqs[i].num_tokens < self.max_context]
        return outputs

    def _generator(self, params: list[SamplingParams]) -> torch.Generator | None:
        seeds = [p.seed for p in params if p.seed is not None]
        return torch.Generator(self.device).manual_seed(seeds[0]) if seeds else None

    # ---------------------------------------------------------------- text helpers
    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` in the model's chat template, ending with the assistant turn's start."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)
