"""Append op: write new K/V tokens into their pages and refresh the pages' key statistics.

Key statistics are kept per page and kv head as rows of ``key_stats[page, head]``:
``STAT_MEAN``, ``STAT_STD`` (population std), ``STAT_MIN``, ``STAT_MAX`` over the page's valid
keys. They are recomputed from the page's keys whenever the page receives tokens, so they are
exact for a partial last page and after it fills (no drift from running updates).
"""

from __future__ import annotations

import torch

STAT_MEAN, STAT_STD, STAT_MIN, STAT_MAX = 0, 1, 2, 3
NUM_STATS = 4


def page_key_stats(page_keys: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Statistics of the first ``fill`` keys of each page.

    page_keys: [pages, kv_heads, page_size, head_dim]; fill: [pages] int, 1..page_size.
    Returns [pages, kv_heads, NUM_STATS, head_dim] float32.
    """
    page_size = page_keys.shape[2]
    keys = page_keys.float()
    valid = (torch.arange(page_size, device=keys.device)[None, :] < fill[:, None])[:, None, :, None]
    count = fill.to(torch.float32)[:, None, None]
    mean = torch.where(valid, keys, 0.0).sum(dim=2) / count
    var = torch.where(valid, (keys - mean[:, :, None, :]) ** 2, 0.0).sum(dim=2) / count
    kmin = torch.where(valid, keys, float("inf")).amin(dim=2)
    kmax = torch.where(valid, keys, float("-inf")).amax(dim=2)
    return torch.stack([mean, var.sqrt(), kmin, kmax], dim=2)


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
    """Public append: the Triton kernel on CUDA, the reference elsewhere (same arguments)."""
    if new_k.is_cuda:
        from asr.attention.kernels.append import append_kv_triton

        return append_kv_triton(k_cache, v_cache, key_stats, new_k, new_v, slot_mapping)
    if new_k.shape[0] == 1:
        return append_one_token(k_cache, v_cache, key_stats, new_k, new_v, int(slot_mapping[0]))
    append_kv_reference(k_cache, v_cache, key_stats, new_k, new_v, slot_mapping)


def append_one_token(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    key_stats: torch.Tensor,
    new_k: torch.Tensor,
    new_v: torch.Tensor,
    slot: int,
) -> None:
    """``append_kv_reference`` for one token at a host-side ``slot`` (a CPU decode step): the page's
    statistics come from its filled prefix directly, without masks (about 3x fewer ops)."""
    page, offset = divmod(slot, k_cache.shape[2])
    k_cache[page, :, offset] = new_k[0].to(k_cache.dtype)
    v_cache[page, :, offset] = new_v[0].to(v_cache.dtype)
    keys = k_cache[page, :, : offset + 1].float()  # [kv_heads, fill, head_dim]
    std, mean = torch.std_mean(keys, dim=1, correction=0)
    key_stats[page] = torch.stack([mean, std, keys.amin(dim=1), keys.amax(dim=1)], dim=1).to(key_stats.dtype)
