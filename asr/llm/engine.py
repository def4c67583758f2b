"""The LLM engine: sequences that grow by appended segments (token ids or embeddings) and generate.

A speech session keeps ONE sequence: ``append(seq, embeds=audio)``, ``generate(seq, ...)``, append the
next chunk, and so on. ``generate_batch`` serves independent requests together. Invariant: after
``append`` or ``generate`` the cache holds every position of the sequence (appended rows and returned
tokens; a stop token is returned to nobody and not cached) and ``seq.next_logits`` predicts the next one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from asr.attention import CacheShape, PagedKVCache, UniqueConfig
from asr.attention.transfer import to_device
from asr.errors import ContextLengthError
from asr.llm.config import EngineConfig, ModelConfig, SamplingParams
from asr.llm.cpu_defaults import default_cpu_dtype, run_device
from asr.llm.distance_cap import DistanceCap, cap_distances
from asr.llm.loader import load_model, load_tokenizer
from asr.llm.model import CausalLM
from asr.llm.quantize import quantize_linear_layers
from asr.llm.runner import ModelRunner
from asr.llm.sampler import sample
from asr.llm.sequence import Sequence
from asr.llm.token_tree import TokenTree, token_tree

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(config: EngineConfig) -> tuple[torch.device, torch.dtype]:
    """The engine's device and dtype: CUDA + bfloat16 when available, else the CPU in the dtype it
    computes natively (``asr.llm.cpu_defaults``: bfloat16 with AVX512-BF16/AMX, else float32)."""
    device = run_device(config.device)
    dtype = config.dtype or ("bfloat16" if device.type == "cuda" else default_cpu_dtype())
    return device, DTYPES[dtype]


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
        # queue each decode step before reading the previous step's tokens (``generate_many``): pays on
        # CUDA, where the device runs while the host reads; on the CPU it would only add a step per stop
        self.decode_ahead = self.device.type == "cuda"
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
            unisparse = config.unisparse if config.prefill == "unisparse" else None
            self._runners[choice] = ModelRunner(
                self.model, self.cache, choice, self.max_context, config.max_batch, config.prefill_chunk,
                config.cuda_graphs, self._scratch_seq, unisparse,
            )
        self.runner = self._runners[choice]

    @classmethod
    def from_pretrained(cls, path: str | Path, config: EngineConfig = EngineConfig()) -> LLMEngine:
        """Load a local Hugging Face directory or GGUF file (model and tokenizer); no hub access."""
        device, dtype = resolve_device(config)
        model, model_dir = load_model(path, device, dtype)
        return cls(model, config, load_tokenizer(model_dir))

    # ---------------------------------------------------------------- sequences
    def new_sequence(self) -> Sequence:
        return Sequence(self.cache.add_sequence())

    def free(self, seq: Sequence) -> None:
        """Give a sequence's pages back."""
        self.cache.free_sequence(seq.seq_id)

    def truncate(self, seq: Sequence, length: int) -> None:
        """Roll a sequence back to its first ``length`` positions (next_logits is cleared: append next)."""
        self.cache.truncate(seq.seq_id, length)
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

    def append(
        self, seq: Sequence, token_ids: Seq[int] | None = None, embeds: torch.Tensor | None = None
    ) -> None:
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

    def accept_proposal(self, seq: Sequence, proposal: Seq[int], stop_token_ids: Seq[int] = (),
                        tolerance: float | Seq[float] = 0.0,
                        stop_tolerance: float = 0.0) -> tuple[list[int], bool]:
        """Speculative decoding: verify ``proposal`` (ids guessed for what ``seq`` generates next) in one
        forward pass and keep its longest prefix whose every token the model accepts: the greedy choice
        (``tolerance`` 0), or a token whose log-probability is within ``tolerance`` nats of it (one
        tolerance for all, or one per proposed token; ``inf`` keeps a token unchecked). Where the model's
        own choice is a stop token, a proposed token is kept within ``stop_tolerance`` nats of it if
        that is larger: ending early can be made to need a clearer preference.

        Returns (the accepted tokens, now cached; whether decoding stopped among them: at a stop token,
        itself neither returned nor cached). ``seq.next_logits`` then predicts the token after the
        accepted ones, so with tolerance 0 ``generate`` goes on exactly as greedy decoding would have.
        The check is a prefill, so it attends as prefill does (every key, or with ``unisparse`` prefill
        on a long context the key blocks chosen for it): under sparse decode attention the kept prefix
        is the one decoding with that prefill's attention would produce.
        """
        stops = set(stop_token_ids) | set(self.model_config.eos_token_ids)
        proposal = list(proposal)[: self.max_context - seq.num_tokens]
        if not proposal or seq.next_logits is None:
            return [], False
        scalar = isinstance(tolerance, int | float)
        tolerances = [float(tolerance)] * len(proposal) if scalar else list(tolerance)
        limits = _Limits(stops, stop_tolerance)
        if not limits.accepts(seq.next_logits[None], proposal[:1], tolerances[:1])[0]:
            return [], False
        start, first_logits = seq.num_tokens, seq.next_logits
        # [k, vocab]: the logits after each proposed token
        after = self.runner.prefill(seq.seq_id, self.embed_tokens(proposal), every_position=True)
        seq.token_ids.extend(proposal)
        seq.num_tokens += len(proposal)
        # proposal[i + 1] after proposal[i]
        accepts = limits.accepts(after[:-1], proposal[1:], tolerances[1 : len(proposal)])
        agreed = 1 + next((i for i, ok in enumerate(accepts) if not ok), len(accepts))
        kept = next((i for i, token in enumerate(proposal[:agreed]) if token in stops), agreed)
        if kept < len(proposal):
            self.truncate(seq, start + kept)
        seq.next_logits = first_logits if kept == 0 else after[kept - 1]
        return proposal[:kept], kept < agreed

    def score_continuations(self, seq: Sequence, candidates: Seq[Seq[int]]) -> list[float]:
        """Log-probability (nats, summed over its tokens) of each candidate continuation of ``seq``, each
        from what ``seq`` holds now; ``seq`` ends as it began (its ``next_logits`` too).

        Where the runner can (``ModelRunner.tree_fits``: a tree of at most one prefill chunk of nodes),
        the candidates go in as one token tree (``asr.llm.token_tree``): one forward over their distinct
        prefixes, each attending the context (past ``min_context``, the key blocks chosen for the tree)
        and its own earlier tokens. Otherwise they go one after another in sorted order, each sharing the
        longest prefix it can with the one before: only the tokens after that prefix are prefilled
        (readings of one chunk mostly differ in a word or two, so this prefills about half the tokens
        of one prefill per candidate); block-sparse prefills of a later candidate attend the key blocks
        the first chose for those positions (``ModelRunner.shared_selection``)."""
        if seq.next_logits is None:
            raise ValueError("append a prompt to the sequence before scoring continuations")
        candidates = [list(candidate) for candidate in candidates]
        for candidate in candidates:
            self.check_fits(seq.num_tokens + len(candidate))
        tree = token_tree([candidate[:-1] for candidate in candidates])
        if tree.tokens and self.runner.tree_fits(len(tree.tokens)):
            return self._score_tree(seq, candidates, tree)
        return self._score_in_turn(seq, candidates)

    def _score_tree(self, seq: Sequence, candidates: list[list[int]], tree: TokenTree) -> list[float]:
        start = seq.num_tokens
        embeds = self.embed_tokens(tree.tokens)
        after = self.runner.prefill_tree(seq.seq_id, embeds, tree.depths, tree.ancestors)
        self.cache.truncate(seq.seq_id, start)
        # row 0: after the context; row 1 + node: after that node
        logprobs = torch.cat([seq.next_logits.float()[None], after.float()]).log_softmax(dim=-1)
        scores = []
        for candidate, path in zip(candidates, tree.paths):
            rows = torch.as_tensor([0] + [1 + node for node in path], device=logprobs.device)
            picked = logprobs[rows].gather(1, torch.as_tensor(candidate, device=logprobs.device)[:, None])
            scores.append(float(picked.sum()) if candidate else 0.0)
        return scores

    def _score_in_turn(self, seq: Sequence, candidates: list[list[int]]) -> list[float]:
        start = seq.num_tokens
        held: list[int] = []  # tokens prefilled after ``start``, as the cache holds them now
        held_logits = [seq.next_logits.float()]  # row i: the logits after held[:i]
        scores = [0.0] * len(candidates)
        with self.runner.shared_selection():
            for index in sorted(range(len(candidates)), key=lambda i: candidates[i]):
                candidate = candidates[index]
                if not candidate:
                    continue
                shared = 0
                while shared < min(len(held), len(candidate) - 1) and held[shared] == candidate[shared]:
                    shared += 1
                del held[shared:], held_logits[shared + 1:]
                if len(candidate) - 1 > shared:
                    self.cache.truncate(seq.seq_id, start + shared)
                    rows = self.embed_tokens(candidate[shared:-1])
                    held_logits += list(self.runner.prefill(seq.seq_id, rows, every_position=True).float())
                    held += candidate[shared:-1]
                logprobs = torch.stack(held_logits[: len(candidate)]).log_softmax(dim=-1)
                picked = logprobs.gather(1, torch.as_tensor(candidate, device=logprobs.device)[:, None])
                scores[index] = float(picked.sum())
        self.cache.truncate(seq.seq_id, start)
        return scores

    def check_fits(self, length: int) -> None:
        if length > self.max_context:
            raise ContextLengthError(
                f"the context needs {length} tokens but this engine's limit is {self.max_context} "
                f"(model limit {self.model_config.max_context}); shorten the input by "
                f"{length - self.max_context} tokens, or use a model with a longer context"
            )

    # ---------------------------------------------------------------- generation
    def generate(
        self,
        seq: Sequence,
        params: SamplingParams = SamplingParams(),
        on_token: Callable[[int], None] | None = None,
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
        """Decode several existing sequences together (at most ``max_batch``).

        With ``decode_ahead`` (CUDA) the host never waits for the step it launches: a step's forward is
        queued with the tokens the previous step picked still on the device, and the host reads those
        tokens (a pinned copy) while the device runs. A row whose token turns out to be a stop token was
        then fed one token too many: its cache is rolled back and its ``next_logits`` restored. Without
        it (CPU, where nothing overlaps) the tokens are read first and stop tokens are never fed.
        """
        if len(seqs) > self.config.max_batch:
            raise ValueError(f"{len(seqs)} sequences exceed max_batch={self.config.max_batch}")
        if any(seq.next_logits is None for seq in seqs):
            raise ValueError("append a prompt to every sequence before generating")
        eos = set(self.model_config.eos_token_ids)
        stops = [set(p.stop_token_ids) | (set() if p.ignore_eos else eos) for p in params]
        outputs: list[list[int]] = [[] for _ in seqs]
        generator = self._generator(params)
        rows = [i for i, p in enumerate(params) if p.max_tokens > 0]
        step = (
            self._pick(rows, torch.stack([seqs[i].next_logits for i in rows]), params, generator)
            if rows
            else None
        )
        while step is not None:
            tokens = None if self.decode_ahead else step.host_tokens()
            fed = [r for r, i in enumerate(step.rows) if seqs[i].num_tokens < self.max_context
                   and (tokens is None or tokens[r] not in stops[i])]
            launched = None
            if fed:
                feed = step.select(fed)
                logits = self.runner.decode([seqs[i].seq_id for i in feed.rows], feed.tokens)
                launched = self._pick(feed.rows, logits, params, generator)
            row_of = {i: r for r, i in enumerate(launched.rows)} if launched else {}
            try:
                tokens = step.host_tokens() if tokens is None else tokens
                keep = []
                for r, (i, token) in enumerate(zip(step.rows, tokens)):
                    seq = seqs[i]
                    if token in stops[i]:
                        if row_of.pop(i, None) is not None:  # fed ahead: take it back out of the cache
                            self.cache.truncate(seq.seq_id, seq.num_tokens)
                        seq.next_logits = step.logits[r]
                        continue
                    outputs[i].append(token)
                    if i in row_of:
                        next_row = row_of.pop(i)
                        seq.num_tokens += 1
                        seq.token_ids.append(token)
                        seq.next_logits = launched.logits[next_row]
                        read, dense = self.runner.pages_read(seq.num_tokens)
                        seq.pages_read += read
                        seq.pages_dense += dense
                        if len(outputs[i]) < params[i].max_tokens and seq.num_tokens < self.max_context:
                            keep.append(next_row)
                    if on_token:
                        on_token(i, token)
            finally:  # rows fed but not accounted (a callback raised): keep cache and sequence in step
                for i in row_of:
                    self.cache.truncate(seqs[i].seq_id, seqs[i].num_tokens)
            step = launched.select(keep) if keep else None
        return outputs

    def _pick(self, rows: list[int], logits: torch.Tensor, params: list[SamplingParams],
              generator: torch.Generator | None) -> _PickedTokens:
        """Tokens for ``rows`` (indices into ``params``) from their logits [len(rows), vocab], on device."""
        if all(params[i].temperature == 0 for i in rows):
            tokens = logits.argmax(dim=-1)
        else:
            temperatures = to_device([params[i].temperature for i in rows], torch.float32, self.device)
            top_ps = to_device([params[i].top_p for i in rows], torch.float32, self.device)
            tokens = sample(logits, temperatures, top_ps, generator)
        return _PickedTokens.start(rows, logits, tokens)

    def _generator(self, params: list[SamplingParams]) -> torch.Generator | None:
        seeds = [p.seed for p in params if p.seed is not None]
        return torch.Generator(self.device).manual_seed(seeds[0]) if seeds else None

    # ---------------------------------------------------------------- text helpers
    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` in the model's chat template, ending with the assistant turn's start."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)


@dataclass(frozen=True)
class _Limits:
    """How far a proposed token may trail the model's choice: stops: the stop token ids; stop_tolerance:
    the least allowance where that choice is a stop token."""

    stops: set[int]
    stop_tolerance: float

    def accepts(self, logits: torch.Tensor, tokens: list[int], tolerances: list[float]) -> list[bool]:
        """Per row of ``logits`` [n, vocab], whether ``tokens[row]`` is within ``tolerances[row]`` nats
        of the row's most likely token (0: it is the greedy choice; inf: always)."""
        if not tokens:
            return []
        logprobs = logits.float().log_softmax(dim=-1)
        picked = logprobs.gather(1, torch.as_tensor(tokens, device=logits.device)[:, None])[:, 0]
        best, choice = logprobs.max(dim=-1)
        allowed = torch.as_tensor(tolerances, dtype=torch.float32, device=logits.device)
        if self.stop_tolerance > 0 and self.stops:
            stopping = torch.isin(choice, torch.as_tensor(sorted(self.stops), device=logits.device))
            allowed = torch.where(stopping, allowed.clamp(min=self.stop_tolerance), allowed)
        return (best - picked <= allowed).tolist()


class _PickedTokens:
    """Tokens picked for ``rows`` (indices into ``generate_many``'s sequences) and the logits they came
    from, on the device, with their copy to a (pinned) host buffer in flight.

    logits: [len(rows), vocab] float32; tokens: [len(rows)] int64; host_index: each row's place in
    ``host`` (a subset shares its parent's copy).
    """

    def __init__(self, rows, logits, tokens, host, host_index, ready) -> None:
        self.rows, self.logits, self.tokens = rows, logits, tokens
        self.host, self.host_index, self.ready = host, host_index, ready

    @classmethod
    def start(cls, rows: list[int], logits: torch.Tensor, tokens: torch.Tensor) -> _PickedTokens:
        cuda = tokens.device.type == "cuda"
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=cuda)
        host.copy_(tokens, non_blocking=cuda)
        ready = None
        if cuda:
            ready = torch.cuda.Event()
            ready.record()
        return cls(rows, logits, tokens, host, list(range(len(rows))), ready)

    def host_tokens(self) -> list[int]:
        """The token ids (waits for the device to have picked them)."""
        if self.ready is not None:
            self.ready.synchronize()
        values = self.host.tolist()
        return [values[j] for j in self.host_index]

    def select(self, keep: list[int]) -> _PickedTokens:
        """The rows at positions ``keep`` (no device work when that is every row)."""
        if keep == list(range(len(self.rows))):
            return self
        index = to_device(keep, torch.int64, self.tokens.device)
        return _PickedTokens([self.rows[r] for r in keep], self.logits[index], self.tokens[index], self.host,
                             [self.host_index[r] for r in keep], self.ready)
