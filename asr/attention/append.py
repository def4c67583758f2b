"""Append op: write new K/V tokens into their pages and refresh the pages' key statistics
(layout and reference statistics: ``asr.attention.page_stats``)."""

from __future__ import annotations

import torch

from asr.attention import cpu
from asr.attention.page_stats import page_key_stats


def append_kv_reference(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    key_stats: torch.Tensor,
    new_k: torch.Tensor,
    new_v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write tokens into the cache in place and refresh the statistics of the pages they touch.

    k_cache, v_cache: [num_pages, kv_heads, page_size, head_dim]
    key_stats: [num_pages, kv_heads, NUM_STATS, head_dim] (cache dtype)
    new_k, new_v: [tokens, kv_heads, head_dim]
    slot_mapping: [tokens] int, ``page * page_size + offset``; tokens of a page arrive in order,
        so a page's fill after the append is its largest written offset + 1.
    """
    page_size = k_cache.shape[2]
    slots = slot_mapping.long()
    pages, offsets = slots // page_size, slots % page_size
    k_cache[pages, :, offsets] = new_k.to(k_cache.dtype)
    v_cache[pages, :, offsets] = new_v.to(v_cache.dtype)
    touched, inverse = torch.unique(pages, return_inverse=True)
    fill = torch.zeros_like(touched).scatter_reduce(0, inverse, offsets + 1, reduce="amax")
    key_stats[touched] = page_key_stats(k_cache[touched], fill).to(key_stats.dtype)


def append_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    key_stats: torch.Tensor,
    new_k: torch.Tensor,
    new_v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Public append: the Triton kernel on CUDA, the CPU path for a single token (a decode step),
    the reference elsewhere (same arguments)."""
    if new_k.is_cuda:
        from asr.attention.kernels.append import append_kv_triton

        return append_kv_triton(k_cache, v_cache, key_stats, new_k, new_v, slot_mapping)
    if new_k.shape[0] == 1:
        return cpu.append_one_token(k_cache, v_cache, key_stats, new_k, new_v, int(slot_mapping[0]))
    append_kv_reference(k_cache, v_cache, key_stats, new_k, new_v, slot_mapping)
