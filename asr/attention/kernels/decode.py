"""Paged decode attention (flash-decoding) over all pages or over chosen pages; reference:
``asr.attention.decode.paged_decode_reference``.

Grid: (batch * kv_heads, splits). A program owns one kv head of one sequence and a contiguous
run of page slots (logical pages when dense, entries of ``chosen_pages`` when sparse); it keeps
every query head of the GQA group on the same K/V tiles (one ``tl.dot`` per tile) and writes an
normalised partial (output, log2-sum-exp). A second kernel merges the splits by log-sum-exp
(merging inside the last split through an atomic counter measured slower on the H100: 20.5 us
against 14.5 us for the sparse attend at 128k, B=1, budget 2048).

Given page scores instead of chosen pages (UNIQUE decode), every split of a row first takes the
row's top-k itself (``selection._top_mask`` on the row's scores in registers, 16 warps) and then
attends the slots that fall to it: the selection costs no launch and no round trip of chosen
pages through memory, at the price of repeating it in each split (splits stay in one wave).
With programmatic dependent launch the kernel starts while the scoring kernel finishes (q, the
length and the row's page table are loaded before waiting for the scores) and the merge kernel
while the splits run.
All sizes derive from tensor shapes, never from tensor values: no host sync, graph-capturable.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from asr.attention.config import UniqueConfig
from asr.attention.kernels.common import (
    KERNEL_DTYPES,
    check_contiguous,
    check_device,
    check_dtype,
    check_last_dim_contiguous,
    interpreting,
    next_power_of_2,
    num_sms,
    pdl_enabled,
)
from asr.attention.kernels.selection import (
    MAX_PAGES,
    RANKED_SCORES,
    _emit_chosen,
    _forced_mask,
    _ordered_key,
    _top_mask,
    search_ways,
)

LOG2_E = 1.4426950408889634
MIN_DOT_ROWS = 16  # tl.dot needs at least 16 rows: small GQA groups are padded
TOKENS_PER_TILE = 64  # keys per loop step (several pages when pages are small)
PROGRAMS_PER_SM = 2  # splits are chosen so the grid covers the SMs about this many times
SELECT_TOKENS_PER_TILE = 64  # the same with the in-kernel selection
SELECT_PROGRAMS_PER_SM = 1  # the same with the in-kernel selection (one 16-warp program fits an SM)
DECODE_WARPS = 4
SELECT_DECODE_WARPS = 16  # with the in-kernel selection: a row of 8192 scores fits 128 registers (8 warps: 216 at 4096)
DECODE_STAGES = 2  # software pipelining depth of the K/V loads


@triton.jit
def _paged_decode_split_kernel(
    q_ptr, k_ptr, v_ptr, page_table_ptr, seq_lens_ptr, chosen_ptr, physical_ptr, o_part_ptr, lse_part_ptr,
    scores_ptr, scratch_ptr, chosen_out_ptr, physical_out_ptr,
    scale_log2, slots_per_split, num_slots, max_pages, stride_scratch,
    stride_qb, stride_qh, stride_kp, stride_kh, stride_kt, stride_vp, stride_vh, stride_vt,
    stride_tb, stride_cb, stride_ch,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPARSE: tl.constexpr, HAS_PHYSICAL: tl.constexpr,
    SELECT: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, SINK: tl.constexpr, LOCAL: tl.constexpr,
    WAYS: tl.constexpr, BLOCK_C: tl.constexpr, WRITE_CHOSEN: tl.constexpr, USE_PDL: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_s = tl.program_id(1)
    num_splits = tl.num_programs(1)
    if USE_PDL:  # the merge kernel may launch now; it waits for these partials itself
        tl.extra.cuda.gdc_launch_dependents()
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
    if SELECT:  # every split of a row takes the row's top-k itself, then attends its share of the slots
        o_sel = tl.arange(0, BLOCK_S)
        m_valid = o_sel < num_pages
        # the row's page table is no output of the scoring kernel: loaded while it finishes
        b_physical = tl.load(page_table_ptr + i_b * stride_tb + o_sel, mask=m_valid, other=0)
        if USE_PDL:
            tl.extra.cuda.gdc_wait()  # the scores of the kernel before are written
        b_score = tl.load(scores_ptr + i_bh * max_pages + o_sel, mask=m_valid, other=float("-inf"))
        m_forced = _forced_mask(o_sel, num_pages, SINK, LOCAL)
        need = num_slots - tl.sum(m_forced.to(tl.int32), 0)
        scratch_row_ptr = scratch_ptr + (i_bh * num_splits + i_s) * stride_scratch
        m_take = m_forced | _top_mask(_ordered_key(b_score), m_valid & ~m_forced, need, scratch_row_ptr, WAYS, BLOCK_C)
        if WRITE_CHOSEN:
            if i_s == 0:
                _emit_chosen(m_take, o_sel, chosen_out_ptr + i_bh * num_slots, physical_out_ptr + i_bh * num_slots,
                             page_table_ptr + i_b * stride_tb, num_slots, BLOCK_K)
        position = tl.cumsum(m_take.to(tl.int32), 0) - 1  # slot of each taken page, in page order
        slot_end = tl.minimum(slot_end, tl.sum(m_take.to(tl.int32), 0))
        m_mine = m_take & (position >= slot_begin) & (position < slot_end)
        slot_list_ptr = scratch_row_ptr + BLOCK_C  # this split's pages, compacted: logical, then physical ids
        tl.store(slot_list_ptr + position - slot_begin, o_sel, mask=m_mine)
        tl.store(slot_list_ptr + slots_per_split + position - slot_begin, b_physical, mask=m_mine)
        tl.debug_barrier()
    for slot0 in range(slot_begin, slot_end, BLOCK_N // PAGE_SIZE):
        o_slot = slot0 + o_n // PAGE_SIZE
        m_slot = o_slot < slot_end
        if SELECT:
            logical = tl.load(slot_list_ptr + o_slot - slot_begin, mask=m_slot, other=-1)
            physical = tl.load(slot_list_ptr + slots_per_split + o_slot - slot_begin, mask=m_slot, other=0)
        elif SPARSE:
            logical = tl.load(chosen_ptr + i_b * stride_cb + i_h * stride_ch + o_slot, mask=m_slot, other=-1)
        else:
            logical = o_slot
        m_page = m_slot & (logical >= 0) & (logical < num_pages)
        if SELECT:
            physical = tl.where(m_page, physical, 0).to(tl.int64)
        elif HAS_PHYSICAL:  # loaded beside the logical pages, not after them
            physical = tl.load(physical_ptr + i_b * stride_cb + i_h * stride_ch + o_slot, mask=m_slot, other=0)
            physical = tl.where(m_page, physical, 0).to(tl.int64)
        else:
            physical = tl.load(page_table_ptr + i_b * stride_tb + logical, mask=m_page, other=0).to(tl.int64)
        m_tok = m_page & (logical * PAGE_SIZE + o_tok < seq_len)
        p_k = k_ptr + physical[:, None] * stride_kp + i_h * stride_kh + o_tok[:, None] * stride_kt + o_d[None, :]
        p_v = v_ptr + physical[:, None] * stride_vp + i_h * stride_vh + o_tok[:, None] * stride_vt + o_d[None, :]
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
    Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, USE_PDL: tl.constexpr,
):
    i_bq = tl.program_id(0)
    i_b = i_bq // Q_HEADS
    i_q = i_bq % Q_HEADS
    o_s = tl.arange(0, BLOCK_S)
    m_s = o_s < num_splits
    o_d = tl.arange(0, HEAD_DIM)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # the partials of the split kernel are written
    b_lse = tl.load(lse_part_ptr + i_bq * num_splits + o_s, mask=m_s, other=float("-inf"))
    b_max = tl.max(b_lse, 0)
    b_w = tl.exp2(b_lse - b_max)
    b_w = tl.where(m_s, b_w, 0.0)
    b_sum = tl.sum(b_w, 0)
    b_o = tl.load(o_part_ptr + (i_bq * num_splits + o_s)[:, None] * HEAD_DIM + o_d[None, :], mask=m_s[:, None], other=0.0)
    b_out = tl.sum(b_o * b_w[:, None], 0) / b_sum
    tl.store(out_ptr + i_b * stride_ob + i_q * stride_oh + o_d, b_out.to(out_ptr.dtype.element_ty))
    tl.store(lse_ptr + i_bq, (b_max + tl.log2(b_sum)) * 0.6931471805599453)


def plan_splits(rows: int, num_slots: int, pages_per_tile: int, programs: int, at_most: bool = False
                ) -> tuple[int, int]:
    """(splits, slots_per_split) so that rows * splits is about ``programs`` (a multiple of the
    SMs; ``at_most``: no more, where a second wave would repeat the selection), each split a
    whole number of tiles. Depends on shapes only (graph-safe)."""
    tiles = max(1, math.ceil(num_slots / pages_per_tile))
    per_row = programs // max(rows, 1) if at_most else math.ceil(programs / max(rows, 1))
    splits = max(1, min(tiles, per_row))
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
    page_scores: torch.Tensor | None = None,
    sparse: UniqueConfig | None = None,
    return_chosen: bool = False,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Kernel of ``paged_decode_reference`` (same arguments and results); fp16/bf16 caches.

    chosen_physical: optional ids in ``page_table`` of ``chosen_pages`` (same shape and strides):
    saves the dependent page-table load.
    page_scores, sparse: select in this launch instead of passing ``chosen_pages``: page_scores
    [batch, kv_heads, max_pages] fp32 as ``score_pages_triton`` writes them (launched just before
    this call: with programmatic dependent launch this kernel starts while scoring finishes);
    every split takes its row's ``sparse.num_select`` pages as ``select_pages_reference`` does
    and attends its share of them. return_chosen: also return those pages and their physical ids
    ([batch, kv_heads, num_select] int32, -1 padded).
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
        raise ValueError(f"unsupported geometry q_heads={q_heads} kv_heads={kv_heads} d={head_dim} page={page_size}")
    select = page_scores is not None
    max_pages = page_table.shape[1]
    chosen_arg, stride_cb, stride_ch = page_table, 0, 0
    if select:
        if sparse is None or chosen_pages is not None or sparse.page_size != page_size:
            raise ValueError("page_scores need the UniqueConfig of the cache's page size and no chosen_pages")
        check_dtype("page_scores", page_scores, (torch.float32,))
        check_contiguous("page_scores", page_scores)
        if page_scores.shape != (batch, kv_heads, max_pages):
            raise ValueError(f"page_scores must be [{batch}, {kv_heads}, {max_pages}], got {tuple(page_scores.shape)}")
        if max_pages > MAX_PAGES:
            raise ValueError(f"in-kernel selection holds at most {MAX_PAGES} pages per row, got {max_pages}")
        num_slots = sparse.num_select
    elif chosen_pages is not None:
        check_dtype("chosen_pages", chosen_pages, (torch.int32,))
        check_last_dim_contiguous("chosen_pages", chosen_pages)
        num_slots = chosen_pages.shape[-1]
        chosen_arg, stride_cb, stride_ch = chosen_pages, chosen_pages.stride(0), chosen_pages.stride(1)
        if chosen_physical is not None:
            check_dtype("chosen_physical", chosen_physical, (torch.int32,))
            if chosen_physical.shape != chosen_pages.shape or chosen_physical.stride() != chosen_pages.stride():
                raise ValueError("chosen_physical must have the shape and strides of chosen_pages")
    else:
        num_slots = max_pages
    group = q_heads // kv_heads
    block_n = max(SELECT_TOKENS_PER_TILE if select else TOKENS_PER_TILE, page_size)
    pages_per_tile = block_n // page_size
    if num_splits is None:
        per_sm = SELECT_PROGRAMS_PER_SM if select else PROGRAMS_PER_SM
        splits, slots_per_split = plan_splits(batch * kv_heads, num_slots, pages_per_tile, per_sm * num_sms(q.device),
                                              at_most=select)
    else:
        slots_per_split = math.ceil(math.ceil(num_slots / num_splits) / pages_per_tile) * pages_per_tile
        splits = math.ceil(num_slots / slots_per_split)
    device = q.device
    o_part = torch.empty(batch * q_heads * splits * head_dim, dtype=torch.float32, device=device)
    lse_part = torch.empty(batch * q_heads * splits, dtype=torch.float32, device=device)
    use_pdl = pdl_enabled(device)
    block_s = block_k = ways = 16  # selection sizes (unused without page_scores)
    scratch = chosen_out = physical_out = lse_part  # unused pointers without page_scores
    num_warps = DECODE_WARPS
    if select:
        block_s = next_power_of_2(max(max_pages, 16))
        block_k = next_power_of_2(num_slots) if return_chosen else 16  # sizes only the chosen-pages output
        num_warps = SELECT_DECODE_WARPS
        ways = search_ways(block_s, num_warps)
        scratch = torch.empty(batch * kv_heads * splits * (RANKED_SCORES + 2 * slots_per_split), dtype=torch.int32,
                              device=device)
        if return_chosen:
            chosen_out = torch.empty(batch, kv_heads, num_slots, dtype=torch.int32, device=device)
            physical_out = torch.empty_like(chosen_out)
    launch = dict(launch_pdl=True) if use_pdl and select else {}
    _paged_decode_split_kernel[(batch * kv_heads, splits)](
        q, k_cache, v_cache, page_table, seq_lens, chosen_arg,
        chosen_physical if chosen_physical is not None else chosen_arg, o_part, lse_part,
        page_scores if select else lse_part, scratch, chosen_out, physical_out,
        scale * LOG2_E, slots_per_split, num_slots, max_pages, RANKED_SCORES + 2 * slots_per_split,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), page_table.stride(0), stride_cb, stride_ch,
        KV_HEADS=kv_heads, GROUP=group, BLOCK_G=max(MIN_DOT_ROWS, next_power_of_2(group)), HEAD_DIM=head_dim,
        PAGE_SIZE=page_size, BLOCK_N=block_n, SPARSE=select or chosen_pages is not None,
        HAS_PHYSICAL=chosen_pages is not None and chosen_physical is not None,
        SELECT=select, BLOCK_S=block_s, BLOCK_K=block_k, SINK=sparse.sink_pages if select else 0,
        LOCAL=sparse.local_pages if select else 0, WAYS=ways, BLOCK_C=RANKED_SCORES,
        WRITE_CHOSEN=select and return_chosen, USE_PDL=use_pdl,
        num_warps=num_warps, num_stages=1 if interpreting() else DECODE_STAGES, **launch,
    )
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty(batch, q_heads, dtype=torch.float32, device=device) if lse is None else lse
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1 or not lse.is_contiguous():
        raise ValueError("out must be like q with unit last stride and lse a contiguous [batch, q_heads] tensor")
    _combine_splits_kernel[(batch * q_heads,)](
        o_part, lse_part, out, lse, splits, out.stride(0), out.stride(1),
        Q_HEADS=q_heads, HEAD_DIM=head_dim, BLOCK_S=max(2, next_power_of_2(splits)), USE_PDL=use_pdl, num_warps=4,
        **(dict(launch_pdl=True) if use_pdl else {}),
    )
    if select and return_chosen:
        return out, lse, chosen_out, physical_out
    return out, lse
