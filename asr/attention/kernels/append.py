"""Append new K/V tokens to their pages and refresh the pages' key statistics in one pass;
reference: ``asr.attention.append.append_kv_reference``.

Grid: (tokens, kv_heads). The program of a page's last new token (the next token goes to
another page) owns the page: it writes every new token of the page (they are the tokens just
before it in ``slot_mapping``: a page's new tokens are contiguous and in order, as
``PagedKVCache.reserve`` lays them out), merges them in registers with the keys already in the
page, and writes mean/std/min/max of the filled rows. Other programs do nothing, so no program
reads what another writes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from asr.attention.kernels.common import (
    KERNEL_DTYPES,
    check_contiguous,
    check_device,
    check_dtype,
    check_last_dim_contiguous,
)
from asr.attention.page_stats import NUM_STATS


@triton.jit
def _append_kv_kernel(
    k_cache_ptr, v_cache_ptr, stats_ptr, new_k_ptr, new_v_ptr, slot_ptr, num_tokens,
    stride_kp, stride_kh, stride_kt, stride_vp, stride_vh, stride_vt, stride_sp, stride_sh,
    stride_nkt, stride_nkh, stride_nvt, stride_nvh,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_h = tl.program_id(1)
    slot = tl.load(slot_ptr + i_t).to(tl.int64)
    page = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    next_slot = tl.load(slot_ptr + i_t + 1, mask=i_t + 1 < num_tokens, other=-1).to(tl.int64)
    owner = (i_t + 1 == num_tokens) | (next_slot // PAGE_SIZE != page) | (next_slot < 0)
    if owner:
        o_r = tl.arange(0, PAGE_SIZE)  # row of the page
        o_d = tl.arange(0, HEAD_DIM)
        token = i_t - offset + o_r  # the new token that wrote row r, if any
        m_range = (o_r <= offset) & (token >= 0)
        row_slot = tl.load(slot_ptr + token, mask=m_range, other=-1).to(tl.int64)
        m_new = m_range & (row_slot == page * PAGE_SIZE + o_r)
        m_old = (o_r <= offset) & ~m_new
        p_nk = new_k_ptr + token.to(tl.int64)[:, None] * stride_nkt + i_h * stride_nkh + o_d[None, :]
        p_nv = new_v_ptr + token.to(tl.int64)[:, None] * stride_nvt + i_h * stride_nvh + o_d[None, :]
        p_k = k_cache_ptr + page * stride_kp + i_h * stride_kh + o_r[:, None] * stride_kt + o_d[None, :]
        p_v = v_cache_ptr + page * stride_vp + i_h * stride_vh + o_r[:, None] * stride_vt + o_d[None, :]
        b_new_k = tl.load(p_nk, mask=m_new[:, None], other=0.0).to(k_cache_ptr.dtype.element_ty)
        b_new_v = tl.load(p_nv, mask=m_new[:, None], other=0.0).to(v_cache_ptr.dtype.element_ty)
        tl.store(p_k, b_new_k, mask=m_new[:, None])
        tl.store(p_v, b_new_v, mask=m_new[:, None])
        b_old_k = tl.load(p_k, mask=m_old[:, None], other=0.0)
        b_k = tl.where(m_new[:, None], b_new_k, b_old_k).to(tl.float32)
        m_fill = (o_r <= offset)[:, None]
        count = (offset + 1).to(tl.float32)
        b_mean = tl.sum(tl.where(m_fill, b_k, 0.0), 0) / count
        b_diff = tl.where(m_fill, b_k - b_mean[None, :], 0.0)
        b_std = tl.sqrt(tl.sum(b_diff * b_diff, 0) / count)
        b_min = tl.min(tl.where(m_fill, b_k, float("inf")), 0)
        b_max = tl.max(tl.where(m_fill, b_k, float("-inf")), 0)
        p_s = stats_ptr + page * stride_sp + i_h * stride_sh + o_d
        ty = stats_ptr.dtype.element_ty
        tl.store(p_s, b_mean.to(ty))
        tl.store(p_s + HEAD_DIM, b_std.to(ty))
        tl.store(p_s + 2 * HEAD_DIM, b_min.to(ty))
        tl.store(p_s + 3 * HEAD_DIM, b_max.to(ty))


def append_kv_triton(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    key_stats: torch.Tensor,
    new_k: torch.Tensor,
    new_v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Kernel of ``append_kv_reference`` (same arguments, in place). A page's new tokens must be
    contiguous in ``slot_mapping`` and in offset order (how ``PagedKVCache.reserve`` makes it)."""
    _, kv_heads, page_size, head_dim = k_cache.shape
    num_tokens = new_k.shape[0]
    check_device(k_cache, v_cache, key_stats, new_k, new_v, slot_mapping)
    check_dtype("k_cache", k_cache, KERNEL_DTYPES + (torch.float32,))
    check_dtype("v_cache", v_cache, (k_cache.dtype,))
    check_dtype("key_stats", key_stats, KERNEL_DTYPES + (torch.float32,))
    check_dtype("slot_mapping", slot_mapping, (torch.int32, torch.int64))
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("new_k", new_k), ("new_v", new_v)):
        check_last_dim_contiguous(name, t)
    check_contiguous("key_stats", key_stats)
    check_contiguous("slot_mapping", slot_mapping)
    if key_stats.shape[2] != NUM_STATS or tuple(new_k.shape[1:]) != (kv_heads, head_dim):
        raise ValueError(f"shapes disagree: key_stats {tuple(key_stats.shape)}, new_k {tuple(new_k.shape)}")
    if page_size & (page_size - 1) or head_dim & (head_dim - 1):
        raise ValueError(f"page_size and head_dim must be powers of two, got {page_size}, {head_dim}")
    if num_tokens == 0:
        return
    _append_kv_kernel[(num_tokens, kv_heads)](
        k_cache, v_cache, key_stats, new_k, new_v, slot_mapping, num_tokens,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), key_stats.stride(0), key_stats.stride(1),
        new_k.stride(0), new_k.stride(1), new_v.stride(0), new_v.stride(1),
        PAGE_SIZE=page_size, HEAD_DIM=head_dim, num_warps=4,
    )
