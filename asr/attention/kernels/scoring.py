"""Page scoring from key statistics; reference: ``asr.attention.scoring.score_pages_reference``.

Every method is two dot products per page with per-dim weights folded over the GQA group first:
unique/gauss ``mean . sum_g q + (std^2) . lam sum_g q^2 / (2 sqrt d)``, unique/l1
``mean . sum_g q + std . lam sum_g |q|``, quest ``max . sum_g relu(q) + min . sum_g min(q, 0)``,
mean ``mean . sum_g q``. So a page costs two stat rows (one for ``mean``) whatever the group size.

Grid: (batch, head groups, programs per group). A program scores one contiguous run of
``pages_per_program`` pages for a group of kv heads at once, in tiles of [pages, heads, head_dim]:
one page-table load serves those heads, and a page's stat rows of those heads (one contiguous
block of the cache) are read together. At large batches a group is every kv head; while the
batch leaves most SMs without a (sequence, head) row, one head per program with longer page
tiles is faster (``plan_heads_per_program``). The page-table load does not wait for the sequence
length (entries past the end are loaded but never followed), so a program pays two dependent
memory round trips (page table, then stats). Short programs and many of them: at batch 1 the
grid still covers every SM several times.

With ``SELECT`` (``score_select_triton``: the UNIQUE decode step at small batches, where one
program scores one kv head) the same launch also chooses the pages: each program reads its scores
back as packed keys (``selection._page_keys``), keeps its top CANDIDATES_PER_PROGRAM, and the
program of a (sequence, head group) that finishes last (an atomic counter per group, reset by that
program) merges the group's candidates into the exact top-k (``selection._select_from_candidates``),
writing logical and physical page ids. No program ranks a whole row, and the step saves the top-k
kernel's launch.
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
    interpreting,
    next_power_of_2,
    num_sms,
    zeroed_counters,
)
from asr.attention.kernels.selection import MAX_PAGES as MAX_SELECT_PAGES
from asr.attention.kernels.selection import _page_keys, _select_from_candidates, select_pages_triton
from asr.attention.page_stats import STAT_MAX, STAT_MEAN, STAT_MIN, STAT_STD

METHOD_GAUSS, METHOD_L1, METHOD_QUEST, METHOD_MEAN = 0, 1, 2, 3
# pages per loop step with one kv head per program (tuned at head_dim 128, 8 warps)
ONE_HEAD_PAGES_PER_TILE = 64
TUNED_HEAD_DIM = 128  # smaller heads take proportionally more pages per step in the one-head layout
ONE_HEAD_WARPS = 8  # 128k B=1 P32 d=128: 15.5 us; 4 warps: 17.2
# every kv head per program: [pages, heads, head_dim] tiles of this many elements and 4 warps (H100, 128k
# B=8 P32, contiguous pages: d=128 62 us against 77 with 32-row tiles and 8 warps; d=64 42 against 57)
ALL_HEADS_TILE_ELEMENTS = 16384
ALL_HEADS_WARPS = 4
# one kv head per program while batch * kv_heads <= this share of the SMs (H100, 128k, P32: at B=1
# 15.5 us against 23.4 with all 8 heads per program; at B=8 85 us against 77; at B=32 316 against 235)
SPLIT_HEADS_MAX_ROWS_PER_SM = 0.25
SCORE_PROGRAMS_PER_SM = 4  # the grid covers the SMs about this many times
MAX_PAGES_PER_PROGRAM = 1024  # longest run of pages one program scores
SCORE_STAGES = 3  # software pipelining depth of the tile loop
# Selection in the scoring launch (H100, 128k, budget 2048, d=128; us per layer, whole step):
# one kv head per program: 25.6 (P64) / 31.7 (P32) at B=1, against 2 programs per SM 25.9 / 35.7,
# 1 per SM 26.7 / 43.7, 4 candidates 28.9 / 44.8, 16 candidates 26.1 / 34.1. Every kv head per
# program (B=8): the group's merge of 8 heads in one 4-warp program costs 57 us at 4 programs per SM
# (select 97.8 against scoring alone 41.1 at P64); at 2 per SM 88.8 / 147.7 total (P64 / P32) against
# about 95 / 126 with the scoring and top-k kernels apart, so large batches keep the two kernels.
FUSED_SELECT_MAX_HEADS = 1  # fuse the selection while a scoring program covers at most this many kv heads
ONE_HEAD_SELECT_PROGRAMS_PER_SM = 4
ALL_HEADS_SELECT_PROGRAMS_PER_SM = 2  # (used past the top-k kernel's row limit)
CANDIDATES_PER_PROGRAM = 8  # top keys each scoring program keeps for its row's merge


@triton.jit
def _score_pages_kernel(
    q_ptr, stats_ptr, page_table_ptr, seq_lens_ptr, scores_ptr,
    candidates_ptr, counters_ptr, chosen_ptr, physical_ptr,
    offset_weight, max_pages, page_size, num_select,
    stride_qb, stride_qh, stride_sp, stride_sh, stride_tb,
    KV_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_P: tl.constexpr, METHOD: tl.constexpr,
    ROW_A: tl.constexpr, ROW_B: tl.constexpr, PAGES_PER_PROGRAM: tl.constexpr,
    SELECT: tl.constexpr, SINK: tl.constexpr, LOCAL: tl.constexpr, CANDIDATES: tl.constexpr,
    BLOCK_PROGRAMS: tl.constexpr, BLOCK_ALL: tl.constexpr, BLOCK_K: tl.constexpr,
):
    i_b = tl.program_id(0)
    i_hg = tl.program_id(1)
    i_p = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + i_b)
    num_pages = (seq_len + page_size - 1) // page_size

    o_h = i_hg * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = o_h < KV_HEADS
    o_g = tl.arange(0, BLOCK_G)
    o_d = tl.arange(0, HEAD_DIM)
    o_qh = o_h[:, None] * GROUP + o_g[None, :]  # [BLOCK_H, BLOCK_G] query heads
    m_qh = m_h[:, None] & (o_g < GROUP)[None, :]
    p_q = q_ptr + i_b * stride_qb + o_qh[:, :, None] * stride_qh + o_d[None, None, :]
    b_q = tl.load(p_q, mask=m_qh[:, :, None], other=0.0).to(tl.float32)  # [BLOCK_H, BLOCK_G, HEAD_DIM]
    if METHOD == 2:  # quest: ROW_A = max, ROW_B = min
        b_wa = tl.sum(tl.maximum(b_q, 0.0), 1)
        b_wb = tl.sum(tl.minimum(b_q, 0.0), 1)
    else:
        b_wa = tl.sum(b_q, 1)
        if METHOD == 0:
            b_wb = tl.sum(b_q * b_q, 1) * offset_weight
        else:
            b_wb = tl.sum(tl.abs(b_q), 1) * offset_weight

    page_table_row_ptr = page_table_ptr + i_b * stride_tb
    scores_row_ptr = scores_ptr + (i_b * KV_HEADS + o_h[None, :]) * max_pages  # [1, BLOCK_H]
    first_page = i_p * PAGES_PER_PROGRAM
    for tile_page in range(first_page, tl.minimum(first_page + PAGES_PER_PROGRAM, max_pages), BLOCK_P):
        o_p = tile_page + tl.arange(0, BLOCK_P)
        m_in = o_p < max_pages
        physical = tl.load(page_table_row_ptr + o_p, mask=m_in, other=0).to(tl.int64)
        m_ph = (o_p < num_pages)[:, None] & m_h[None, :]  # [BLOCK_P, BLOCK_H]
        p_stat = (
            stats_ptr
            + physical[:, None, None] * stride_sp
            + o_h[None, :, None] * stride_sh
            + o_d[None, None, :]
        )
        b_a = tl.load(p_stat + ROW_A * HEAD_DIM, mask=m_ph[:, :, None], other=0.0).to(tl.float32)
        b_score = tl.sum(b_a * b_wa[None, :, :], 2)
        if METHOD != 3:
            b_b = tl.load(p_stat + ROW_B * HEAD_DIM, mask=m_ph[:, :, None], other=0.0).to(tl.float32)
            if METHOD == 0:
                b_b = b_b * b_b
            b_score += tl.sum(b_b * b_wb[None, :, :], 2)
        b_score = tl.where(m_ph, b_score, float("-inf"))
        tl.store(scores_row_ptr + o_p[:, None], b_score, mask=m_in[:, None] & m_h[None, :])

    if SELECT:  # keep this program's top CANDIDATES; the row's last program to finish selects
        row = i_b * KV_HEADS + o_h
        num_programs = tl.num_programs(2)
        tl.debug_barrier()  # every thread's scores are stored before they are read back
        o_c = first_page + tl.arange(0, PAGES_PER_PROGRAM)
        b_key = _page_keys(scores_ptr + row[:, None] * max_pages, o_c[None, :], m_h[:, None], num_pages,
                           SINK, LOCAL)
        o_n = tl.arange(0, CANDIDATES)
        p_cand = candidates_ptr + (row[:, None] * num_programs + i_p) * CANDIDATES + o_n[None, :]
        tl.store(p_cand, tl.topk(b_key, CANDIDATES, dim=1), mask=m_h[:, None])
        tl.debug_barrier()  # every thread's candidates are stored before the counter releases them
        counter = counters_ptr + i_b * tl.num_programs(1) + i_hg
        if tl.atomic_add(counter, 1, sem="acq_rel") == num_programs - 1:
            tl.atomic_xchg(counter, 0)
            _select_from_candidates(
                scores_ptr, candidates_ptr, page_table_row_ptr, chosen_ptr, physical_ptr,
                row, m_h, num_pages, max_pages, num_select, num_programs,
                SINK, LOCAL, PAGES_PER_PROGRAM, CANDIDATES, BLOCK_PROGRAMS, BLOCK_ALL, BLOCK_K,
            )


def _method(config: UniqueConfig, head_dim: int) -> tuple[int, int, int, float]:
    """(method id, stat row A, stat row B, weight of the offset term)."""
    if config.method == "quest":
        return METHOD_QUEST, STAT_MAX, STAT_MIN, 0.0
    if config.method == "mean":
        return METHOD_MEAN, STAT_MEAN, STAT_STD, 0.0
    if config.offset == "gauss":
        return METHOD_GAUSS, STAT_MEAN, STAT_STD, config.lam / (2 * math.sqrt(head_dim))
    return METHOD_L1, STAT_MEAN, STAT_STD, config.lam


def plan_heads_per_program(batch: int, kv_heads: int, num_sms: int) -> int:
    """kv heads one scoring program covers: 1 at small batches, all of them otherwise."""
    return 1 if batch * kv_heads <= SPLIT_HEADS_MAX_ROWS_PER_SM * num_sms else kv_heads


def plan_pages_per_program(
    rows: int, max_pages: int, block_p: int, num_sms: int, programs_per_sm: int
) -> int:
    """Pages per scoring program (a power of two, ``block_p`` to MAX_PAGES_PER_PROGRAM) so that
    the grid over ``rows`` (sequence, head group) pairs covers the SMs about ``programs_per_sm``
    times. Depends on shapes only (graph-safe)."""
    programs_per_row = triton.cdiv(programs_per_sm * num_sms, rows)
    wanted = next_power_of_2(triton.cdiv(max_pages, programs_per_row))
    return max(block_p, min(max(MAX_PAGES_PER_PROGRAM, block_p), wanted))


def score_pages_triton(
    q: torch.Tensor,
    key_stats: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    config: UniqueConfig,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kernel of ``score_pages_reference`` (same arguments): scores [batch, kv_heads, max_pages]
    fp32, -inf past each sequence's end (into ``out`` if given)."""
    return _launch(q, key_stats, page_table, seq_lens, config, out, select=False)[0]


def score_select_triton(
    q: torch.Tensor,
    key_stats: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    config: UniqueConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scoring and top-k selection (the UNIQUE decode step's first half): in one launch where a
    scoring program covers at most FUSED_SELECT_MAX_HEADS kv heads (small batches), else the
    scoring kernel and then the top-k kernel (``selection.select_pages_triton``), whose one
    program per row beats a merge of eight heads' candidates in one program there.

    Arguments as ``score_pages_reference``. Returns scores (as ``score_pages_triton``), chosen
    pages [batch, kv_heads, num_select] int32: the set ``select_pages_reference`` chooses (ties
    aside; the order within a row is unspecified), -1 padded at the end; and their ids in
    ``page_table`` (-1 padded), which the decode kernel reads directly. Graph-capturable: sizes
    depend on shapes only and the row counters are left at zero."""
    heads_per_program = plan_heads_per_program(q.shape[0], key_stats.shape[1], num_sms(q.device))
    if heads_per_program <= FUSED_SELECT_MAX_HEADS or page_table.shape[1] > MAX_SELECT_PAGES:
        return _launch(q, key_stats, page_table, seq_lens, config, None, select=True)
    scores = _launch(q, key_stats, page_table, seq_lens, config, None, select=False)[0]
    return (scores, *select_pages_triton(scores, seq_lens, page_table, config.page_size, config.num_select,
                                         config.sink_pages, config.local_pages))


def plan_candidates(pages_per_program: int, num_select: int) -> int:
    """Candidates one program keeps: CANDIDATES_PER_PROGRAM, at most its pages and the budget
    (at least 2: ``tl.topk`` ranks at least two)."""
    return max(2, min(CANDIDATES_PER_PROGRAM, pages_per_program, next_power_of_2(num_select)))


def _launch(q, key_stats, page_table, seq_lens, config, out, select: bool):
    batch, q_heads, head_dim = q.shape
    _, kv_heads, num_stats, _ = key_stats.shape
    max_pages = page_table.shape[1]
    check_device(q, key_stats, page_table, seq_lens)
    check_dtype("key_stats", key_stats, KERNEL_DTYPES + (torch.float32,))
    check_dtype("q", q, KERNEL_DTYPES + (torch.float32,))
    check_dtype("page_table", page_table, (torch.int32,))
    check_dtype("seq_lens", seq_lens, (torch.int32,))
    check_contiguous("key_stats", key_stats)
    check_contiguous("seq_lens", seq_lens)
    if q.stride(-1) != 1 or page_table.stride(-1) != 1:
        raise ValueError("q and page_table need unit stride in their last dim")
    if q_heads % kv_heads or head_dim & (head_dim - 1) or num_stats != 4:
        raise ValueError(f"unsupported geometry q_heads={q_heads} kv_heads={kv_heads} d={head_dim}")
    method, row_a, row_b, offset_weight = _method(config, head_dim)
    group = q_heads // kv_heads
    scores = (
        torch.empty(batch, kv_heads, max_pages, dtype=torch.float32, device=q.device) if out is None else out
    )
    if (
        scores.shape != (batch, kv_heads, max_pages)
        or scores.dtype != torch.float32
        or not scores.is_contiguous()
    ):
        raise ValueError(f"out must be a contiguous fp32 [{batch}, {kv_heads}, {max_pages}] tensor")
    sms = num_sms(q.device)
    block_h = next_power_of_2(plan_heads_per_program(batch, kv_heads, sms))
    head_groups = triton.cdiv(kv_heads, block_h)
    if block_h == 1:
        block_p, warps = ONE_HEAD_PAGES_PER_TILE * max(1, TUNED_HEAD_DIM // head_dim), ONE_HEAD_WARPS
    else:
        block_p, warps = max(1, ALL_HEADS_TILE_ELEMENTS // (block_h * head_dim)), ALL_HEADS_WARPS
    programs_per_sm = SCORE_PROGRAMS_PER_SM
    if select:
        programs_per_sm = ONE_HEAD_SELECT_PROGRAMS_PER_SM
        if block_h > 1:
            programs_per_sm = ALL_HEADS_SELECT_PROGRAMS_PER_SM
    pages_per_program = plan_pages_per_program(batch * head_groups, max_pages, block_p, sms, programs_per_sm)
    programs_per_row = triton.cdiv(max_pages, pages_per_program)
    num_select = config.num_select
    candidates = plan_candidates(pages_per_program, num_select)
    block_k = max(2, next_power_of_2(num_select))
    if select:
        shape = (batch, kv_heads, num_select)
        chosen = torch.empty(shape, dtype=torch.int32, device=q.device)
        physical = torch.empty(shape, dtype=torch.int32, device=q.device)
        kept = torch.empty(
            batch * kv_heads * programs_per_row * candidates, dtype=torch.int64, device=q.device
        )
        counters = zeroed_counters("score_select", q.device, batch * head_groups)
    else:
        chosen = physical = kept = counters = scores  # not read
    _score_pages_kernel[(batch, head_groups, programs_per_row)](
        q, key_stats, page_table, seq_lens, scores, kept, counters, chosen, physical,
        offset_weight, max_pages, config.page_size, num_select,
        q.stride(0), q.stride(1), key_stats.stride(0), key_stats.stride(1), page_table.stride(0),
        KV_HEADS=kv_heads, BLOCK_H=block_h, GROUP=group, BLOCK_G=next_power_of_2(group), HEAD_DIM=head_dim,
        BLOCK_P=block_p, METHOD=method, ROW_A=row_a, ROW_B=row_b, PAGES_PER_PROGRAM=pages_per_program,
        SELECT=select, SINK=config.sink_pages, LOCAL=config.local_pages, CANDIDATES=candidates,
        BLOCK_PROGRAMS=next_power_of_2(programs_per_row),
        BLOCK_ALL=max(block_k, next_power_of_2(programs_per_row) * candidates), BLOCK_K=block_k,
        num_warps=warps, num_stages=1 if interpreting() else SCORE_STAGES,
    )
    return scores, chosen, physical
