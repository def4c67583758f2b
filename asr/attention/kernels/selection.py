"""Top-k page selection with sink and local pages forced in; reference:
``asr.attention.selection.select_pages_reference``.

``_top_mask`` takes the ``need`` largest of a tile of candidate scores held in registers: it
brackets the need-th largest by a few WAYS-way searches (each one reduction over the tile), then
ranks the few scores left in the bracket exactly. Ties at the bound go to the lower position,
i.e. the lower page index, since tiles hold pages in ascending order. ``_emit_chosen`` writes the
taken pages in that order through a prefix sum, -1 padded, with their physical page ids.

One program per (sequence, kv head) row: the top-k of scores given (``select_pages``, and the
UNIQUE decode step at large batches, after the scoring kernel).

At small batches the step selects inside the scoring kernel instead (``scoring.score_select_triton``)
from packed keys: ``_page_keys`` puts a page's ordered score in the high word of an int64 and the
page (inverted) in the low word, so keys are distinct, a larger key is a higher score and equal
scores order by the lower page, exactly as above. Each scoring program keeps the top candidates
of its pages (``tl.topk``); the program of a row that finishes last merges them
(``_select_from_candidates``) and writes the chosen pages in key order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from asr.attention.kernels.common import check_contiguous, check_device, check_dtype, next_power_of_2

MAX_PAGES = 16384  # a row of scores lives in registers; longer rows use the reference
SEARCH_WAYS = 4  # thresholds tested per search step (4 beat 8 and 16 on the H100)
SCORES_PER_THREAD = 8  # sets the warps of a selection program (8: no spills on sm_90 up to 4096 pages)
MAX_SELECT_WARPS = 16
RANKED_SCORES = 128  # scores left near the k-th are ranked exactly against each other
NO_KEY = tl.constexpr(-(2**63))  # packed key of "no page" (below every page's key)
PAGE_MASK = tl.constexpr(0x7FFFFFFF)  # the low word of a packed key holds page ^ PAGE_MASK


@triton.jit
def _ordered_key(x):
    """fp32 -> int32 with the same order (flip the magnitude bits of negatives)."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _key_value(key):
    """Inverse of ``_ordered_key`` (int64 key in int32 range -> fp32)."""
    key = key.to(tl.int32)
    return tl.where(key < 0, key ^ 0x7FFFFFFF, key).to(tl.float32, bitcast=True)


@triton.jit
def _top_mask(b_key, m_cand, need, scratch_ptr, WAYS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Mask of the ``need`` largest keys among ``m_cand`` (ties to the lower position).

    b_key: [BLOCK] int32 ordered keys; m_cand: [BLOCK] bool; scratch_ptr: BLOCK_C int32 of
    scratch. The bound [lo, hi) always holds the need-th largest candidate: count(key >= lo) =
    count_lo >= need > count(key >= hi) = count_hi. (1) WAYS-way search, thresholds spaced by
    value (keys when values cannot split), until at most BLOCK_C candidates lie in [lo, hi);
    (2) those are compacted through ``scratch_ptr`` and ranked exactly ([BLOCK_C, BLOCK_C]
    compares); (3) the ties at the bound are taken in position order."""
    count_lo = tl.sum(m_cand.to(tl.int32), 0)
    count_hi = count_lo * 0
    lo = tl.min(tl.where(m_cand, b_key, 2**31 - 1), 0).to(tl.int64)
    hi = tl.max(tl.where(m_cand, b_key, -(2**31)), 0).to(tl.int64) + 1
    if count_lo <= need:  # every candidate fits
        lo = hi - 2**40
        need = count_lo
    o_w = tl.arange(0, WAYS)
    while (count_lo > need) & (count_lo - count_hi > BLOCK_C) & (hi - lo > 1):
        lo_value = _key_value(lo)
        step = (_key_value(hi - 1) - lo_value) / (WAYS + 1)
        b_t = _ordered_key(lo_value + step * (o_w + 1).to(tl.float32)).to(tl.int64)
        b_t_linear = lo + ((hi - lo) * (o_w + 1).to(tl.int64)) // (WAYS + 1)
        b_t = tl.where((b_t > lo) & (b_t < hi), b_t, b_t_linear)  # in [lo, hi): fits int32
        b_count = tl.sum(((b_key[:, None] >= b_t.to(tl.int32)[None, :]) & m_cand[:, None]).to(tl.int32), 0)
        m_ge = b_count >= need
        new_lo = tl.max(tl.where(m_ge, b_t, lo), 0)
        count_lo = tl.min(tl.where(m_ge, b_count, count_lo), 0)
        hi = tl.min(tl.where(m_ge, hi, b_t), 0)
        count_hi = tl.max(tl.where(m_ge, count_hi, b_count), 0)
        lo = new_lo
    if (count_lo > need) & (count_lo - count_hi <= BLOCK_C):
        m_in = m_cand & (b_key >= lo) & (b_key < hi)
        tl.store(scratch_ptr + tl.cumsum(m_in.to(tl.int32), 0) - 1, b_key, mask=m_in)
        tl.debug_barrier()
        o_c = tl.arange(0, BLOCK_C)
        m_c = o_c < count_lo - count_hi
        c_key = tl.load(scratch_ptr + o_c, mask=m_c, other=-(2**31))
        before = (c_key[None, :] > c_key[:, None]) | (
            (c_key[None, :] == c_key[:, None]) & (o_c[None, :] < o_c[:, None])
        )
        rank = tl.sum((before & m_c[None, :]).to(tl.int32), 1)  # 0 = largest, ties by position
        kth = tl.max(tl.where(m_c & (rank == need - count_hi - 1), c_key, -(2**31)), 0).to(tl.int64)
        lo = kth
        hi = kth + 1
    m_above = m_cand & (b_key >= hi)
    m_tie = m_cand & (b_key >= lo) & (b_key < hi)
    tie_rank = tl.cumsum(m_tie.to(tl.int32), 0)
    return (m_above | (m_tie & (tie_rank <= need - tl.sum(m_above.to(tl.int32), 0)))) & (need > 0)


@triton.jit
def _forced_mask(b_page, num_pages, SINK: tl.constexpr, LOCAL: tl.constexpr):
    """Pages always read: the first SINK and the last LOCAL of a sequence (b_page < 0: none)."""
    return (b_page >= 0) & (b_page < num_pages) & ((b_page < SINK) | (b_page >= num_pages - LOCAL))


@triton.jit
def _emit_chosen(m_take, b_page, chosen_row_ptr, physical_row_ptr, page_table_row_ptr, num_select,
                 BLOCK_K: tl.constexpr):
    """Write the taken pages (b_page, in ascending order) and their physical ids, -1 padded."""
    position = tl.cumsum(m_take.to(tl.int32), 0) - 1
    physical = tl.load(page_table_row_ptr + b_page, mask=m_take, other=0)
    tl.store(chosen_row_ptr + position, b_page, mask=m_take)
    tl.store(physical_row_ptr + position, physical, mask=m_take)
    num_taken = tl.sum(m_take.to(tl.int32), 0)
    o_k = tl.arange(0, BLOCK_K)
    m_pad = (o_k >= num_taken) & (o_k < num_select)
    tl.store(chosen_row_ptr + o_k, tl.full([BLOCK_K], -1, tl.int32), mask=m_pad)
    tl.store(physical_row_ptr + o_k, tl.full([BLOCK_K], -1, tl.int32), mask=m_pad)


@triton.jit
def _page_keys(score_row_ptr, o_page, m_page, num_pages, SINK: tl.constexpr, LOCAL: tl.constexpr):
    """Packed int64 keys of pages ``o_page`` of score rows ``score_row_ptr`` (broadcastable): the
    ordered score (+inf for sink and local pages) in the high word, ``page ^ PAGE_MASK`` (larger for
    lower pages) in the low one; NO_KEY where ``m_page`` is off or the page is past ``num_pages``."""
    m_valid = m_page & (o_page < num_pages)
    b_score = tl.load(score_row_ptr + o_page, mask=m_valid, other=float("-inf"), cache_modifier=".cg")
    b_score = tl.where(_forced_mask(o_page, num_pages, SINK, LOCAL), float("inf"), b_score)
    b_key = (_ordered_key(b_score).to(tl.int64) << 32) | (o_page ^ PAGE_MASK).to(tl.int64)
    return tl.where(m_valid, b_key, NO_KEY)


@triton.jit
def _key_page(b_key):
    """Logical page of packed keys (garbage for NO_KEY)."""
    return (b_key & PAGE_MASK).to(tl.int32) ^ PAGE_MASK


@triton.jit
def _merge_top(b_top, b_key, BLOCK_K: tl.constexpr):
    """Top BLOCK_K keys (descending) per row of two [rows, BLOCK_K] key tiles."""
    b_both = tl.reshape(tl.join(b_top, b_key), [b_top.shape[0], 2 * BLOCK_K])
    return tl.topk(b_both, BLOCK_K, dim=1)


@triton.jit
def _select_from_candidates(
    scores_ptr, candidates_ptr, page_table_row_ptr, chosen_ptr, physical_ptr,
    row, m_row, num_pages, max_pages, num_select, num_programs,
    SINK: tl.constexpr, LOCAL: tl.constexpr, PAGES_PER_PROGRAM: tl.constexpr, CANDIDATES: tl.constexpr,
    BLOCK_PROGRAMS: tl.constexpr, BLOCK_ALL: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Exact top ``num_select`` pages of score rows ``row`` ([rows] of batch * kv_heads) from the
    candidates each of the rows' ``num_programs`` programs kept (its top CANDIDATES keys of
    PAGES_PER_PROGRAM pages, descending; [batch * kv_heads, num_programs, CANDIDATES] int64).

    Let t be the num_select-th largest candidate. A page a program did not keep is below that
    program's last candidate; if the last candidate is <= t, the page is below t and so outside the
    top num_select of the row (whose num_select-th key is >= t, candidates being row keys). Only a
    program whose every candidate beats t can hide more: its other pages are merged in too. Writes
    chosen pages (highest key first, -1 past the chosen) and their ids in ``page_table_row_ptr``."""
    o_k = tl.arange(0, BLOCK_K)
    o_j = tl.arange(0, BLOCK_ALL)
    o_r = tl.arange(0, BLOCK_PROGRAMS)
    candidate_rows = candidates_ptr + row[:, None] * num_programs * CANDIDATES
    m_all = m_row[:, None] & (o_j < num_programs * CANDIDATES)[None, :]
    b_all = tl.load(candidate_rows + o_j[None, :], mask=m_all, other=NO_KEY, cache_modifier=".cg")
    b_top = tl.topk(b_all, BLOCK_K, dim=1)
    kth = tl.max(tl.where(o_k[None, :] == num_select - 1, b_top, NO_KEY), 1)
    b_last = tl.load(candidate_rows + o_r[None, :] * CANDIDATES + CANDIDATES - 1,
                     mask=m_row[:, None] & (o_r < num_programs)[None, :], other=NO_KEY, cache_modifier=".cg")
    m_full = b_last > kth[:, None]  # [rows, BLOCK_PROGRAMS]: every candidate of the program was taken
    if tl.max(tl.max(m_full.to(tl.int32), 1), 0) > 0:
        b_full = tl.max(m_full.to(tl.int32), 0)
        score_rows = scores_ptr + row[:, None] * max_pages
        for i_p in range(num_programs):
            if tl.max(tl.where(o_r == i_p, b_full, 0), 0) > 0:
                bound = tl.max(tl.where(o_r[None, :] == i_p, b_last, NO_KEY), 1)  # its last candidate
                chunk_end = (i_p + 1) * PAGES_PER_PROGRAM
                for first in range(i_p * PAGES_PER_PROGRAM, chunk_end, BLOCK_K):
                    o_page = first + o_k[None, :]
                    b_key = _page_keys(score_rows, o_page, m_row[:, None] & (o_page < chunk_end), num_pages,
                                       SINK, LOCAL)
                    b_top = _merge_top(b_top, tl.where(b_key < bound[:, None], b_key, NO_KEY), BLOCK_K)
    m_take = (o_k[None, :] < num_select) & (b_top != NO_KEY)
    b_page = _key_page(b_top)
    physical = tl.load(page_table_row_ptr + b_page, mask=m_take & m_row[:, None], other=-1)
    m_out = m_row[:, None] & (o_k < num_select)[None, :]
    p_out = row[:, None] * num_select + o_k[None, :]
    tl.store(chosen_ptr + p_out, tl.where(m_take, b_page, -1), mask=m_out)
    tl.store(physical_ptr + p_out, tl.where(m_take, physical, -1), mask=m_out)


@triton.jit
def _select_pages_kernel(
    scores_ptr,
    seq_lens_ptr,
    page_table_ptr,
    chosen_ptr,
    physical_ptr,
    scratch_ptr,
    max_pages,
    num_select,
    stride_tb,
    KV_HEADS: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    SINK: tl.constexpr,
    LOCAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WAYS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_b = i_bh // KV_HEADS
    seq_len = tl.load(seq_lens_ptr + i_b)
    num_pages = (seq_len + PAGE_SIZE - 1) // PAGE_SIZE
    o_n = tl.arange(0, BLOCK_N)
    m_valid = o_n < num_pages
    b_score = tl.load(
        scores_ptr + i_bh * max_pages + o_n, mask=m_valid & (o_n < max_pages), other=float("-inf")
    )
    m_forced = _forced_mask(o_n, num_pages, SINK, LOCAL)
    need = num_select - tl.sum(m_forced.to(tl.int32), 0)
    m_take = m_forced | _top_mask(
        _ordered_key(b_score), m_valid & ~m_forced, need, scratch_ptr + i_bh * BLOCK_C, WAYS, BLOCK_C
    )
    _emit_chosen(m_take, o_n, chosen_ptr + i_bh * num_select, physical_ptr + i_bh * num_select,
                 page_table_ptr + i_b * stride_tb, num_select, BLOCK_K)


def select_warps(block_n: int) -> int:
    """Warps of a selection program: about SCORES_PER_THREAD scores per thread."""
    return max(4, min(MAX_SELECT_WARPS, block_n // (32 * SCORES_PER_THREAD)))


def search_ways(block_n: int, num_warps: int) -> int:
    """Thresholds per search step: halved when a thread holds more than SCORES_PER_THREAD scores
    (the [scores, ways] compare tile would spill)."""
    return SEARCH_WAYS if block_n <= 32 * num_warps * SCORES_PER_THREAD else max(2, SEARCH_WAYS // 2)


def select_pages_triton(
    scores: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    page_size: int,
    num_select: int,
    sink_pages: int,
    local_pages: int,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel of ``select_pages_reference``: scores [batch, kv_heads, max_pages] fp32 ->
    (chosen, chosen_physical), both [batch, kv_heads, num_select] int32: logical pages ascending,
    -1 padded (into ``out`` if given), and their ids in ``page_table`` ([batch, >= max_pages] int32)."""
    batch, kv_heads, max_pages = scores.shape
    check_device(scores, seq_lens, page_table)
    check_dtype("scores", scores, (torch.float32,))
    check_dtype("seq_lens", seq_lens, (torch.int32,))
    check_dtype("page_table", page_table, (torch.int32,))
    check_contiguous("scores", scores)
    check_contiguous("seq_lens", seq_lens)
    if page_table.stride(-1) != 1 or page_table.shape[0] != batch:
        raise ValueError("page_table must be [batch, max_pages] with unit stride in its last dim")
    if max_pages > MAX_PAGES:
        raise ValueError(f"selection kernel holds at most {MAX_PAGES} pages per row, got {max_pages}")
    chosen = (
        torch.empty(batch, kv_heads, num_select, dtype=torch.int32, device=scores.device)
        if out is None
        else out
    )
    if (
        chosen.shape != (batch, kv_heads, num_select)
        or chosen.dtype != torch.int32
        or not chosen.is_contiguous()
    ):
        raise ValueError(f"out must be a contiguous int32 [{batch}, {kv_heads}, {num_select}] tensor")
    physical = torch.empty_like(chosen)
    block_n = next_power_of_2(max(max_pages, 16))
    num_warps = select_warps(block_n)
    scratch = torch.empty(batch * kv_heads * RANKED_SCORES, dtype=torch.int32, device=scores.device)
    _select_pages_kernel[(batch * kv_heads,)](
        scores, seq_lens, page_table, chosen, physical, scratch, max_pages, num_select, page_table.stride(0),
        KV_HEADS=kv_heads, PAGE_SIZE=page_size, SINK=sink_pages, LOCAL=local_pages, BLOCK_N=block_n,
        BLOCK_K=next_power_of_2(num_select), WAYS=search_ways(block_n, num_warps), BLOCK_C=RANKED_SCORES,
        num_warps=num_warps,
    )
    return chosen, physical
