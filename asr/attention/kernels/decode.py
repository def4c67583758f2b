"""Paged decode attention (flash-decoding) over all pages or over chosen pages; reference:
``asr.attention.decode.paged_decode_reference``.

Grid: (batch * kv_heads, splits). A program owns one kv head of one sequence and a contiguous
run of page slots (logical pages when dense, entries of ``chosen_pages`` when sparse); it keeps
every query head of the GQA group on the same K/V tiles (one ``tl.dot`` per tile) and writes an
normalised partial (output, log2-sum-exp). A second kernel merges the splits by log-sum-exp
(merging inside the last split through an atomic counter measured slower on the H100, twice:
20.5 us against 14.5 us for the sparse attend at 128k, B=1, budget 2048, P32; and again 18.2
against 14.4 at P64, 43.6 against 41.5 at B=8).

UNIQUE decode passes the pages ``scoring.score_select_triton`` chose, with their physical ids.
Top-k inside this kernel and programmatic dependent launch were measured and removed (H100,
separate top-k vs in-kernel: 128k B=1 P32 41.2 vs 41.1 us, 32k B=1 28.9 vs 30.3, 128k B=8 124.6
vs 150.6, 32k B=32 P16 247 vs 342; PDL 45.6 vs 45.0 us with/without).
All sizes derive from tensor shapes, never from tensor values: no host sync, graph-capturable.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from asr.attention.kernels.common import (
    KERNEL_DTYPES,
    check_contiguous,
    check_device,
    check_dtype,
    check_last_dim_contiguous,
    interpreting,
    next_power_of_2,
    num_sms,
)

LOG2_E = 1.4426950408889634
MIN_DOT_ROWS = 16  # tl.dot needs at least 16 rows: small GQA groups are padded
TOKENS_PER_TILE = 64  # keys per loop step (several pages when pages are small)
PROGRAMS_PER_SM = 2  # splits are chosen so the grid covers the SMs about this many times
DECODE_WARPS = 4
DECODE_STAGES = 2  # software pipelining depth of the K/V loads


@triton.jit
def _paged_decode_split_kernel(
    q_ptr, k_ptr, v_ptr, page_table_ptr, seq_lens_ptr, chosen_ptr, physical_ptr, o_part_ptr, lse_part_ptr,
    scale_log2, slots_per_split, num_slots,
    stride_qb, stride_qh, stride_kp, stride_kh, stride_kt, stride_vp, stride_vh, stride_vt,
    stride_tb, stride_cb, stride_ch,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPARSE: tl.constexpr, HAS_PHYSICAL: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_s = tl.program_id(1)
    num_splits = tl.num_programs(1)
    i_b = i_bh // KV_HEADS
    i_h = i_bh % KV_HEADS
    seq_len = tl.load(seq_lens_ptr + i_b)
    num_pages = (seq_len + PAGE_SIZE - 1) // PAGE_SIZE

    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < GROUP
    o_d = tl.arange(0, HEAD_DIM)
    o_n = tl.arange(0, BLOCK_N)
    o_tok = o_n % PAGE_SIZE
    p_q = q_ptr + i_b * stride_qb + (i_h * GROUP + o_g)[:, None] * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_g[:, None], other=0.0)

    b_m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_G], tl.float32)
    b_acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    slot_begin = i_s * slots_per_split
    slot_end = tl.minimum(slot_begin + slots_per_split, num_slots)
    if not SPARSE:
        slot_end = tl.minimum(slot_end, num_pages)
    for slot0 in range(slot_begin, slot_end, BLOCK_N // PAGE_SIZE):
        o_slot = slot0 + o_n // PAGE_SIZE
        m_slot = o_slot < slot_end
        if SPARSE:
            logical = tl.load(chosen_ptr + i_b * stride_cb + i_h * stride_ch + o_slot, mask=m_slot, other=-1)
        else:
            logical = o_slot
        m_page = m_slot & (logical >= 0) & (logical < num_pages)
        if HAS_PHYSICAL:  # loaded beside the logical pages, not after them
            physical = tl.load(
                physical_ptr + i_b * stride_cb + i_h * stride_ch + o_slot, mask=m_slot, other=0
            )
            physical = tl.where(m_page, physical, 0).to(tl.int64)
        else:
            physical = tl.load(page_table_ptr + i_b * stride_tb + logical, mask=m_page, other=0).to(tl.int64)
        m_tok = m_page & (logical * PAGE_SIZE + o_tok < seq_len)
        p_k = (
            k_ptr
            + physical[:, None] * stride_kp
            + i_h * stride_kh
            + o_tok[:, None] * stride_kt
            + o_d[None, :]
        )
        p_v = (
            v_ptr
            + physical[:, None] * stride_vp
            + i_h * stride_vh
            + o_tok[:, None] * stride_vt
            + o_d[None, :]
        )
        b_k = tl.load(p_k, mask=m_tok[:, None], other=0.0)
        b_v = tl.load(p_v, mask=m_tok[:, None], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k)) * scale_log2  # [BLOCK_G, BLOCK_N], log2 units
        b_s = tl.where(m_tok[None, :], b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_alpha = tl.exp2(b_m - b_m_safe)
        b_p = tl.exp2(b_s - b_m_safe[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
        b_m = b_m_new

    b_lse = tl.where(b_l > 0, b_m + tl.log2(tl.maximum(b_l, 1e-30)), float("-inf"))
    b_out = b_acc / tl.maximum(b_l, 1e-30)[:, None]
    o_qh = i_b * KV_HEADS * GROUP + i_h * GROUP + o_g  # flat (batch, q head)
    p_o = o_part_ptr + (o_qh[:, None] * num_splits + i_s) * HEAD_DIM + o_d[None, :]
    tl.store(p_o, b_out, mask=m_g[:, None])
    tl.store(lse_part_ptr + o_qh * num_splits + i_s, b_lse, mask=m_g)


@triton.jit
def _combine_splits_kernel(
    o_part_ptr, lse_part_ptr, out_ptr, lse_ptr, num_splits, stride_ob, stride_oh,
    Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
):
    i_bq = tl.program_id(0)
    i_b = i_bq // Q_HEADS
    i_q = i_bq % Q_HEADS
    o_s = tl.arange(0, BLOCK_S)
    m_s = o_s < num_splits
    o_d = tl.arange(0, HEAD_DIM)
    b_lse = tl.load(lse_part_ptr + i_bq * num_splits + o_s, mask=m_s, other=float("-inf"))
    b_max = tl.max(b_lse, 0)
    b_w = tl.exp2(b_lse - b_max)
    b_w = tl.where(m_s, b_w, 0.0)
    b_sum = tl.sum(b_w, 0)
    b_o = tl.load(
        o_part_ptr + (i_bq * num_splits + o_s)[:, None] * HEAD_DIM + o_d[None, :],
        mask=m_s[:, None],
        other=0.0,
    )
    b_out = tl.sum(b_o * b_w[:, None], 0) / b_sum
    tl.store(out_ptr + i_b * stride_ob + i_q * stride_oh + o_d, b_out.to(out_ptr.dtype.element_ty))
    tl.store(lse_ptr + i_bq, (b_max + tl.log2(b_sum)) * 0.6931471805599453)


def plan_splits(rows: int, num_slots: int, pages_per_tile: int, programs: int) -> tuple[int, int]:
    """(splits, slots_per_split) so that rows * splits is about ``programs`` (a multiple of the
    SMs), each split a whole number of tiles. Depends on shapes only (graph-safe)."""
    tiles = max(1, math.ceil(num_slots / pages_per_tile))
    splits = max(1, min(tiles, math.ceil(programs / max(rows, 1))))
    slots_per_split = math.ceil(tiles / splits) * pages_per_tile
    return math.ceil(num_slots / slots_per_split), slots_per_split


def paged_decode_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    chosen_pages: torch.Tensor | None = None,
    chosen_physical: torch.Tensor | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel of ``paged_decode_reference`` (same arguments and results); fp16/bf16 caches.

    chosen_physical: optional ids in ``page_table`` of ``chosen_pages`` (same shape and strides,
    as ``select_pages_triton`` returns them): saves the dependent page-table load.
    num_splits: override the number of splits per (sequence, kv head) (tuning and tests).
    out, lse: optional result buffers ([batch, q_heads, head_dim] q.dtype, [batch, q_heads] fp32).
    """
    batch, q_heads, head_dim = q.shape
    _, kv_heads, page_size, _ = k_cache.shape
    check_device(q, k_cache, v_cache, page_table, seq_lens)
    check_dtype("k_cache", k_cache, KERNEL_DTYPES)
    check_dtype("q", q, (k_cache.dtype,))
    check_dtype("v_cache", v_cache, (k_cache.dtype,))
    check_dtype("page_table", page_table, (torch.int32,))
    check_dtype("seq_lens", seq_lens, (torch.int32,))
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("page_table", page_table)):
        check_last_dim_contiguous(name, t)
    check_contiguous("seq_lens", seq_lens)
    if q_heads % kv_heads or head_dim not in (64, 128, 256) or page_size & (page_size - 1):
        raise ValueError(
            f"unsupported geometry q_heads={q_heads} kv_heads={kv_heads} d={head_dim} page={page_size}"
        )
    chosen_arg, stride_cb, stride_ch = page_table, 0, 0
    if chosen_pages is not None:
        check_dtype("chosen_pages", chosen_pages, (torch.int32,))
        check_last_dim_contiguous("chosen_pages", chosen_pages)
        num_slots = chosen_pages.shape[-1]
        chosen_arg, stride_cb, stride_ch = chosen_pages, chosen_pages.stride(0), chosen_pages.stride(1)
        if chosen_physical is not None:
            check_dtype("chosen_physical", chosen_physical, (torch.int32,))
            if (
                chosen_physical.shape != chosen_pages.shape
                or chosen_physical.stride() != chosen_pages.stride()
            ):
                raise ValueError("chosen_physical must have the shape and strides of chosen_pages")
    else:
        num_slots = page_table.shape[1]
    group = q_heads // kv_heads
    block_n = max(TOKENS_PER_TILE, page_size)
    pages_per_tile = block_n // page_size
    if num_splits is None:
        splits, slots_per_split = plan_splits(batch * kv_heads, num_slots, pages_per_tile,
                                              PROGRAMS_PER_SM * num_sms(q.device))
    else:
        slots_per_split = math.ceil(math.ceil(num_slots / num_splits) / pages_per_tile) * pages_per_tile
        splits = math.ceil(num_slots / slots_per_split)
    device = q.device
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty(batch, q_heads, dtype=torch.float32, device=device) if lse is None else lse
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1 or not lse.is_contiguous():
        raise ValueError(
            "out must be like q with unit last stride and lse a contiguous [batch, q_heads] tensor"
        )
    o_part = torch.empty(batch * q_heads * splits * head_dim, dtype=torch.float32, device=device)
    lse_part = torch.empty(batch * q_heads * splits, dtype=torch.float32, device=device)
    _paged_decode_split_kernel[(batch * kv_heads, splits)](
        q, k_cache, v_cache, page_table, seq_lens, chosen_arg,
        chosen_physical if chosen_physical is not None else chosen_arg, o_part, lse_part,
        scale * LOG2_E, slots_per_split, num_slots,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), page_table.stride(0), stride_cb, stride_ch,
        KV_HEADS=kv_heads, GROUP=group, BLOCK_G=max(MIN_DOT_ROWS, next_power_of_2(group)), HEAD_DIM=head_dim,
        PAGE_SIZE=page_size, BLOCK_N=block_n, SPARSE=chosen_pages is not None,
        HAS_PHYSICAL=chosen_pages is not None and chosen_physical is not None,
        num_warps=DECODE_WARPS, num_stages=1 if interpreting() else DECODE_STAGES,
    )
    _combine_splits_kernel[(batch * q_heads,)](
        o_part, lse_part, out, lse, splits, out.stride(0), out.stride(1),
        Q_HEADS=q_heads, HEAD_DIM=head_dim, BLOCK_S=max(2, next_power_of_2(splits)), num_warps=4,
    )
    return out, lse
