"""Attention of the decoder over the paged KV cache, in prefill and in decode.

The runner builds one ``StepContext`` per forward (host work, once per step); every layer reads it.

- Prefill: the new tokens of ONE sequence (possibly appended to a context already in the cache). Their
  K/V are written to the pages in full (page statistics stay exact), then either the sequence's whole
  K/V (cached + new) is gathered from the pages and attended with SDPA under a causal mask shifted by
  the cached length, or, with ``unisparse`` set, each query block attends only the key blocks
  ``asr.attention.prefill.unisparse_prefill`` chooses.
- Decode: one new token per sequence: ``PagedKVCache.write`` (the append kernel on CUDA, capturable in a
  graph), then ``decode_attention`` (dense or top-k pages).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from asr.attention import DecodeMetadata, PagedKVCache, UniqueConfig, decode_attention
from asr.attention.config import UniSparseConfig
from asr.attention.paged_cache import gather_sequence
from asr.attention.prefill import unisparse_prefill
from asr.attention.shared_selection import SharedSelection


@dataclass
class StepContext:
    """What every layer of one forward shares.

    cache: the paged KV cache; slot_mapping: [tokens] int64 slots of the new tokens.
    Prefill (``decode is None``): page_table: [pages] int32 the sequence's pages (cached + new tokens);
        start: tokens already cached before this chunk; unisparse: block-sparse prefill, or None for
        dense; shared_selection: key blocks chosen once for prefills at the same positions, or None;
        tree: [tokens, tokens] bool, the new tokens are a token tree (``asr.llm.token_tree``): each
        attends the cached keys (those of the chosen blocks under ``unisparse``) and the new tokens
        marked True in its row (None: causally).
    Decode: decode: page table and lengths (including the new token); sparse: top-k page choice, or
        None for dense.
    """

    cache: PagedKVCache
    slot_mapping: torch.Tensor
    page_table: torch.Tensor | None = None
    start: int = 0
    unisparse: UniSparseConfig | None = None
    shared_selection: SharedSelection | None = None
    tree: torch.Tensor | None = None
    decode: DecodeMetadata | None = None
    sparse: UniqueConfig | None = None


def prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, scale: float,
    tree: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDPA of ``n`` new queries over ``start + n`` keys (the first ``start`` already cached): causal,
    or with ``tree`` ([n, n] bool) every cached key and the new keys its row marks.

    q: [n, q_heads, d]; k, v: [start + n, kv_heads, d]. Query i sits at position ``start + i``.
    Returns [n, q_heads, d].
    """
    n = q.shape[0]
    qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    gqa = q.shape[1] != k.shape[1]
    if start == 0 and tree is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        if tree is None:
            q_pos = torch.arange(start, start + n, device=q.device)[:, None]
            mask = torch.arange(start + n, device=q.device)[None, :] <= q_pos
        else:
            mask = torch.cat([torch.ones(n, start, dtype=torch.bool, device=q.device), tree.to(q.device)], 1)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out[0].transpose(0, 1)


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: StepContext, layer: int, scale: float
) -> torch.Tensor:
    """Store this step's K/V in the cache and attend. q: [tokens, q_heads, d]; k, v: [tokens, kv_heads, d].

    Returns [tokens, q_heads, d].
    """
    cache = ctx.cache
    if ctx.decode is None:
        cache.write(layer, k, v, ctx.slot_mapping)
        if ctx.unisparse is not None:
            shared = None if ctx.shared_selection is None else (ctx.shared_selection, layer)
            return unisparse_prefill(q, cache.k[layer], cache.v[layer], ctx.page_table, ctx.start, scale,
                                     ctx.unisparse, cache.key_stats[layer], shared, ctx.tree)
        if ctx.start == 0:  # nothing cached before: attend over the fresh K/V directly
            return prefill_attention(q, k.to(cache.k.dtype), v.to(cache.v.dtype), 0, scale, ctx.tree)
        length = ctx.start + q.shape[0]
        keys = gather_sequence(cache.k[layer], ctx.page_table, length)
        values = gather_sequence(cache.v[layer], ctx.page_table, length)
        return prefill_attention(q, keys, values, ctx.start, scale, ctx.tree)
    cache.write(layer, k, v, ctx.slot_mapping)
    return decode_attention(
        q, cache.k[layer], cache.v[layer], cache.key_stats[layer], ctx.decode, scale, ctx.sparse, layer
    )
