"""Decode-step attention as the engine calls it: per-step metadata once, then one call per layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from asr.attention.config import UniqueConfig
from asr.attention.decode import paged_decode, unique_decode


@dataclass
class DecodeMetadata:
    """What every layer of one decode step shares: planned once per step (as FlashInfer's ``plan``),
    read by every layer with no host work of its own.

    page_table: [batch, max_pages] int32 physical page ids; seq_lens: [batch] int32 tokens in
    the cache including the token being decoded (already appended).
    host_seq_lens: the same lengths as host ints where the step runs on the CPU (given by the caller,
    or read from ``seq_lens`` once here); None on CUDA, where decode depends on device values only
    (no sync, graph-capturable). max_seq_len: their maximum (None on CUDA).
    """

    page_table: torch.Tensor
    seq_lens: torch.Tensor
    host_seq_lens: list[int] | None = None
    max_seq_len: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.host_seq_lens is None and not self.seq_lens.is_cuda:
            self.host_seq_lens = self.seq_lens.tolist()
        if self.host_seq_lens:
            self.max_seq_len = max(self.host_seq_lens)


def fits_budget_on_host(metadata: DecodeMetadata, sparse: UniqueConfig) -> bool:
    """True when every sequence fits the token budget, so top-k would choose every page anyway.

    Known only where lengths live on the host (CPU): there it saves scoring and a padded gather;
    on CUDA it would be a device sync, so the graph-captured path always selects.
    """
    return metadata.max_seq_len is not None and metadata.max_seq_len <= sparse.num_select * sparse.page_size


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    key_stats: torch.Tensor,
    metadata: DecodeMetadata,
    scale: float,
    sparse: UniqueConfig | None,
    layer: int,
) -> torch.Tensor:
    """Attention of one decode token per sequence for one layer.

    q: [batch, q_heads, head_dim]; k_cache, v_cache: [num_pages, kv_heads, page_size, head_dim];
    key_stats: [num_pages, kv_heads, NUM_STATS, head_dim]. ``sparse=None`` (or a layer below
    ``sparse.dense_layers``) reads every page; otherwise the top-k pages by ``sparse.method``.
    Returns [batch, q_heads, head_dim].

    On CUDA sparse decode is three launches at small batches (scoring that also selects, the split
    decode over the chosen pages, its merge) and four at large ones (scoring and top-k apart; dense:
    the split decode and merge) whose sizes depend on tensor shapes only: no
    host sync, so a decode step can be captured in a CUDA graph per batch bucket (fixed batch
    and page-table width).
    """
    if sparse is not None and layer >= sparse.dense_layers and not fits_budget_on_host(metadata, sparse):
        out, _ = unique_decode(
            q,
            k_cache,
            v_cache,
            key_stats,
            metadata.page_table,
            metadata.seq_lens,
            scale,
            sparse,
            need_lse=False,
            host_seq_lens=metadata.host_seq_lens,
        )
    else:
        out, _ = paged_decode(
            q,
            k_cache,
            v_cache,
            metadata.page_table,
            metadata.seq_lens,
            scale,
            need_lse=False,
            host_seq_lens=metadata.host_seq_lens,
        )
    return out
