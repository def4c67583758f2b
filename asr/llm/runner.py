"""Model runner: prefill and decode forwards over the paged cache, CUDA graphs for decode.

Host work (slot reservation, page tables, the host-side facts of a decode step such as its lengths)
happens once per step here; layers only read the ``StepContext``. The page table kept between
decode steps is rebuilt when the cache's ``layout_version`` says a sequence lost pages. Decode on
CUDA replays a graph captured per batch-size bucket, with fixed-width page tables sized for
``max_context`` and padded rows writing to a scratch page.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from asr.attention import DecodeMetadata, PagedKVCache, UniqueConfig
from asr.attention.config import UniSparseConfig
from asr.attention.shared_selection import SharedSelection
from asr.attention.transfer import to_device
from asr.llm.attention import StepContext
from asr.llm.model import CausalLM

log = logging.getLogger(__name__)


class ModelRunner:
    """Runs a CausalLM against a PagedKVCache.

    sparse: the decode page choice (None = dense); max_context: longest sequence (sizes graph page
    tables); prefill_chunk: new tokens per prefill forward; scratch_seq: a one-token cache sequence that
    padded graph rows write to and read (never a live sequence); unisparse: block-sparse prefill for
    contexts of at least its ``min_context`` tokens (None: every prefill dense).
    """

    def __init__(
        self,
        model: CausalLM,
        cache: PagedKVCache,
        sparse: UniqueConfig | None,
        max_context: int,
        max_batch: int,
        prefill_chunk: int,
        cuda_graphs: bool,
        scratch_seq: int,
        unisparse: UniSparseConfig | None = None,
    ) -> None:
        self.model, self.cache, self.sparse, self.unisparse = model, cache, sparse, unisparse
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self._shared_selection: SharedSelection | None = None  # within ``shared_selection``
        self.device = cache.k.device
        self.page_size = cache.page_size
        self.max_pages = math.ceil(max_context / self.page_size)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.scratch_page = cache.pages(scratch_seq)[0]
        self.scratch_slot = self.scratch_page * self.page_size
        self.page_table = torch.full(
            (max_batch, self.max_pages), self.scratch_page, dtype=torch.int32, device=self.device
        )
        self._table_seqs: list[int] = []
        self._table_counts: list[int] = []
        self._table_version = -1  # the cache's layout_version when the kept page table was built
        if self.use_graphs:
            self._capture_graphs()

    # ---------------------------------------------------------------- prefill
    @contextmanager
    def shared_selection(self) -> Iterator[None]:
        """Within the block, block-sparse prefills at positions an earlier one of the block covered
        attend the key blocks it chose (``asr.attention.shared_selection``): for prefills of
        alternatives after one context, undone before the next."""
        self._shared_selection = SharedSelection()
        try:
            yield
        finally:
            self._shared_selection = None

    @torch.inference_mode()
    def prefill(self, seq_id: int, embeds: torch.Tensor, every_position: bool = False) -> torch.Tensor:
        """Append ``embeds`` ([n, hidden], n >= 1) to sequence ``seq_id`` in chunks; returns the last
        position's logits [vocab] float32, or with ``every_position`` each position's [n, vocab]."""
        hidden, every = None, []
        for begin in range(0, embeds.shape[0], self.prefill_chunk):
            chunk = embeds[begin : begin + self.prefill_chunk].to(
                self.device, self.model.embed_tokens.weight.dtype
            )
            start = self.cache.length(seq_id)
            position = self.cache.next_position(seq_id)  # start less the distance ceiling's shift
            slot_mapping = self.cache.reserve([seq_id], [chunk.shape[0]])
            sparse = self._unisparse_at(start + chunk.shape[0])
            page_table = self.cache.page_table([seq_id])[0] if start > 0 or sparse else None
            positions = torch.arange(position, position + chunk.shape[0], device=self.device)
            ctx = StepContext(self.cache, slot_mapping, page_table=page_table, start=start, unisparse=sparse,
                              shared_selection=self._shared_selection if sparse else None)
            hidden = self.model(chunk, positions, ctx)
            if every_position:
                every.append(self.model.logits(hidden))
        return torch.cat(every) if every_position else self.model.logits(hidden[-1:])[0]

    def _unisparse_at(self, length: int) -> UniSparseConfig | None:
        """The block-sparse prefill of a forward that brings the context to ``length`` tokens, or None
        (dense: no UniSparse, or a context under its ``min_context``)."""
        if self.unisparse is None or length < self.unisparse.min_context:
            return None
        return self.unisparse

    def tree_fits(self, count: int) -> bool:
        """Whether a token tree of ``count`` nodes goes in one forward (``prefill_tree``): at most one
        prefill chunk (dense, or block-sparse with every block of its nodes attended by the later ones,
        ``select_blocks(tree=True)``, so each node sees all its ancestors)."""
        return count <= self.prefill_chunk

    @torch.inference_mode()
    def prefill_tree(self, seq_id: int, embeds: torch.Tensor, depths: list[int],
                     ancestors: torch.Tensor) -> torch.Tensor:
        """One forward over the nodes of a token tree after sequence ``seq_id``'s cached tokens
        (``asr.llm.token_tree``), dense or block-sparse as a prefill to that length would be: ``embeds``
        [n, hidden] the nodes' inputs, parents first; ``depths`` their depths (a node sits at the cache's
        ``next_position`` plus its depth); ``ancestors`` [n, n] bool what each node attends besides the
        cache. Their K/V are written after the cache, node i in its (length + i)-th slot (the caller
        truncates them away); returns each node's logits [n, vocab] float32. Only where ``tree_fits``."""
        count = embeds.shape[0]
        if not self.tree_fits(count):
            raise ValueError(f"a {count}-node tree cannot be prefilled in one forward here")
        start, position = self.cache.length(seq_id), self.cache.next_position(seq_id)
        slot_mapping = self.cache.reserve([seq_id], [count])
        positions = position + torch.as_tensor(depths, dtype=torch.int64, device=self.device)
        page_table = self.cache.page_table([seq_id])[0]
        ctx = StepContext(self.cache, slot_mapping, page_table=page_table, start=start,
                          unisparse=self._unisparse_at(start + count), tree=ancestors.to(self.device))
        hidden = self.model(embeds.to(self.device, self.model.embed_tokens.weight.dtype), positions, ctx)
        return self.model.logits(hidden)

    # ---------------------------------------------------------------- decode
    @torch.inference_mode()
    def decode(self, seq_ids: list[int], token_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per sequence (``token_ids``: [batch] int64 on device); returns [batch, vocab]
        float32 logits for each sequence's next token."""
        batch = len(seq_ids)
        lengths = [self.cache.length(s) for s in seq_ids]
        next_positions = [self.cache.next_position(s) for s in seq_ids]
        slot_mapping = self.cache.reserve(seq_ids, [1] * batch)
        page_table = self._update_page_table(seq_ids)
        # one host-to-device copy for the per-step integers
        step = to_device([next_positions, [n + 1 for n in lengths]], torch.int64, self.device)
        positions, seq_lens = step[0], step[1].int()
        bucket = self._bucket(batch)
        if bucket is None:
            width = max(math.ceil((n + 1) / self.page_size) for n in lengths)
            # on the CPU the step's lengths are planned here once, from the host values already at hand
            host_lens = [n + 1 for n in lengths] if self.device.type == "cpu" else None
            ctx = self._decode_context(slot_mapping, page_table[:batch, :width], seq_lens, host_lens)
            return self.model.logits(self.model(self.model.embed_tokens(token_ids), positions, ctx))
        static = self.static
        static["token_ids"][:batch] = token_ids
        static["positions"][:batch] = positions
        static["slot_mapping"][:batch] = slot_mapping
        static["seq_lens"][:batch] = seq_lens
        if batch < bucket:  # padded rows: the scratch page, never a live sequence's slots
            static["token_ids"][batch:bucket] = 0
            static["positions"][batch:bucket] = 0
            static["slot_mapping"][batch:bucket] = self.scratch_slot
            static["seq_lens"][batch:bucket] = 1
        self.graphs[bucket].replay()
        return self.graph_logits[bucket][:batch].clone()

    def _update_page_table(self, seq_ids: list[int]) -> torch.Tensor:
        """The device page table [max_batch, max_pages] with rows for ``seq_ids`` (padded rows hold the
        scratch page). Kept between steps: only pages allocated since the last step are copied, unless
        the batch changed or the cache's layout did (a sequence was truncated or freed)."""
        counts = [self.cache.page_count(s) for s in seq_ids]
        table = self.page_table
        if list(seq_ids) != self._table_seqs or self.cache.layout_version != self._table_version:
            table.fill_(self.scratch_page)
            table[: len(seq_ids)] = self.cache.page_table(seq_ids, width=self.max_pages)
        else:
            rows, cols, pages = [], [], []
            for row, (seq_id, count) in enumerate(zip(seq_ids, counts)):
                first = self._table_counts[row]
                rows.extend([row] * (count - first)), cols.extend(range(first, count))
                pages.extend(self.cache.pages(seq_id, first, count))
            if pages:
                update = to_device([rows, cols, pages], torch.int64, self.device)
                table[update[0], update[1]] = update[2].int()
        self._table_seqs, self._table_counts = list(seq_ids), counts
        self._table_version = self.cache.layout_version
        return table

    def _decode_context(self, slot_mapping, page_table, seq_lens, host_seq_lens=None) -> StepContext:
        """One decode step's context; ``host_seq_lens``: its lengths on the host (CPU steps only)."""
        metadata = DecodeMetadata(page_table, seq_lens, host_seq_lens)
        return StepContext(self.cache, slot_mapping, decode=metadata, sparse=self.sparse)

    def pages_read(self, length: int) -> tuple[int, int]:
        """(pages read, pages a dense decode reads) by one decode step of a ``length``-token context,
        summed over layers and kv heads."""
        shape = self.cache.shape
        pages = math.ceil(length / self.page_size)
        dense = pages * shape.num_layers * shape.num_kv_heads
        if self.sparse is None:
            return dense, dense
        dense_layers = min(self.sparse.dense_layers, shape.num_layers)
        sparse_pages = min(pages, self.sparse.num_select)
        read = (pages * dense_layers + sparse_pages * (shape.num_layers - dense_layers)) * shape.num_kv_heads
        return read, dense

    # ---------------------------------------------------------------- CUDA graphs
    def _bucket(self, batch: int) -> int | None:
        if not self.graphs:
            return None
        return next((size for size in sorted(self.graphs) if size >= batch), None)

    @torch.inference_mode()
    def _capture_graphs(self) -> None:
        """Capture one decode graph per bucket (1, 2, 4, 8, ... max_batch), largest first, sharing a pool."""
        n = self.max_batch
        self.graph_logits: dict[int, torch.Tensor] = {}
        self.static = {
            "token_ids": torch.zeros(n, dtype=torch.int64, device=self.device),
            "positions": torch.zeros(n, dtype=torch.int64, device=self.device),
            "slot_mapping": torch.full((n,), self.scratch_slot, dtype=torch.int64, device=self.device),
            "page_table": self.page_table,
            "seq_lens": torch.ones(n, dtype=torch.int32, device=self.device),
        }
        sizes = sorted({min(2**i, n) for i in range(int(math.log2(n)) + 2)} | {n}, reverse=True)
        pool = None
        for size in sizes:
            static = self.static
            ctx = self._decode_context(
                static["slot_mapping"][:size], static["page_table"][:size], static["seq_lens"][:size]
            )

            def step() -> torch.Tensor:
                hidden = self.model(
                    self.model.embed_tokens(static["token_ids"][:size]), static["positions"][:size], ctx
                )
                return self.model.logits(hidden)

            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                step()  # warm-up (kernel autotuning, lazy allocations)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = step()
            pool = graph.pool()
            self.graphs[size] = graph
            self.graph_logits[size] = logits
        torch.cuda.synchronize()
        log.info("captured decode CUDA graphs for batch sizes %s", sizes)
