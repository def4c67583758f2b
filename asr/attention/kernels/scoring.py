"""Page scoring from key statistics, optionally fused with top-k selection; reference:
``asr.attention.scoring.score_pages_reference`` (+ ``select_pages_reference`` when fused).

Every method is two dot products per page with per-dim weights folded over the GQA group first:
unique/gauss ``mean . sum_g q + (std^2) . lam sum_g q^2 / (2 sqrt d)``, unique/l1
``mean . sum_g q + std . lam sum_g |q|``, quest ``max . sum_g relu(q) + min . sum_g min(q, 0)``,
mean ``mean . sum_g q``. So a page costs two stat rows (one for ``mean``) whatever the group size.

Grid: (batch * kv_heads, programs per row); a program scores every programs-per-row-th tile of
BLOCK_P pages (a loop, so the loads of the next tile overlap this one's arithmetic). Fused: each program also bumps a per-row counter after
writing its scores; the program that finishes a row last selects its top-k (``_select_row``)
and resets the counter, so one launch scores and selects.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from asr.attention.append import STAT_MAX, STAT_MEAN, STAT_MIN, STAT_STD
from asr.attention.config import UniqueConfig
from asr.attention.kernels.common import (
    KERNEL_DTYPES,
    check_contiguous,
    check_device,
    check_dtype,
    interpreting,
    next_power_of_2,
    num_sms as _num_sms,
    zeroed_counters,
)
from asr.attention.kernels.selection import MAX_PAGES, RANKED_SCORES, _select_row, search_ways, select_warps

METHOD_GAUSS, METHOD_L1, METHOD_QUEST, METHOD_MEAN = 0, 1, 2, 3
PAGES_PER_TILE = 128  # pages scored per loop step
SCORE_PROGRAMS_PER_SM = 2  # programs per row are chosen so the grid covers the SMs this many times
SCORE_WARPS = 8  # warps of an unfused scoring program
SCORE_STAGES = 3  # software pipelining depth of the tile loop


@triton.jit
def _score_pages_kernel(
    q_ptr, stats_ptr, page_table_ptr, seq_lens_ptr, scores_ptr, chosen_ptr, counter_ptr, scratch_ptr,
    offset_weight, max_pages, num_tiles, num_select, stride_qb, stride_qh, stride_sp, stride_sh, stride_tb,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_P: tl.constexpr, METHOD: tl.constexpr,
    ROW_A: tl.constexpr, ROW_B: tl.constexpr, FUSE_SELECT: tl.constexpr,
    SINK: tl.constexpr, LOCAL: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, WAYS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_p = tl.program_id(1)
    i_b = i_bh // KV_HEADS
    i_h = i_bh % KV_HEADS
    seq_len = tl.load(seq_lens_ptr + i_b)
    num_pages = (seq_len + PAGE_SIZE - 1) // PAGE_SIZE

    o_g = tl.arange(0, BLOCK_G)
    o_d = tl.arange(0, HEAD_DIM)
    p_q = q_ptr + i_b * stride_qb + (i_h * GROUP + o_g)[:, None] * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=(o_g < GROUP)[:, None], other=0.0).to(tl.float32)
    if METHOD == 2:  # quest: ROW_A = max, ROW_B = min
        b_wa = tl.sum(tl.maximum(b_q, 0.0), 0)
        b_wb = tl.sum(tl.minimum(b_q, 0.0), 0)
    else:
        b_wa = tl.sum(b_q, 0)
        if METHOD == 0:
            b_wb = tl.sum(b_q * b_q, 0) * offset_weight
        else:
            b_wb = tl.sum(tl.abs(b_q), 0) * offset_weight

    row_ptr = scores_ptr + i_bh * max_pages
    for i_tile in range(i_p, num_tiles, tl.num_programs(1)):
        o_p = i_tile * BLOCK_P + tl.arange(0, BLOCK_P)
        m_p = o_p < num_pages
        physical = tl.load(page_table_ptr + i_b * stride_tb + o_p, mask=m_p, other=0).to(tl.int64)
        p_stat = stats_ptr + physical[:, None] * stride_sp + i_h * stride_sh + o_d[None, :]
        b_a = tl.load(p_stat + ROW_A * HEAD_DIM, mask=m_p[:, None], other=0.0).to(tl.float32)
        b_score = tl.sum(b_a * b_wa[None, :], 1)
        if METHOD != 3:
            b_b = tl.load(p_stat + ROW_B * HEAD_DIM, mask=m_p[:, None], other=0.0).to(tl.float32)
            if METHOD == 0:
                b_b = b_b * b_b
            b_score += tl.sum(b_b * b_wb[None, :], 1)
        b_score = tl.where(m_p, b_score, float("-inf"))
        tl.store(row_ptr + o_p, b_score, mask=o_p < max_pages)
    if FUSE_SELECT:
        done = tl.atomic_add(counter_ptr + i_bh, 1, sem="acq_rel")
        if done == tl.num_programs(1) - 1:
            _select_row(row_ptr, chosen_ptr + i_bh * num_select, scratch_ptr + i_bh * BLOCK_C, num_pages,
                        max_pages, num_select, SINK, LOCAL, BLOCK_N, BLOCK_K, WAYS, BLOCK_C)
            tl.atomic_xchg(counter_ptr + i_bh, 0)


def _method(config: UniqueConfig, head_dim: int) -> tuple[int, int, int, float]:
    """(method id, stat row A, stat row B, weight of the offset term)."""
    if config.method == "quest":
        return METHOD_QUEST, STAT_MAX, STAT_MIN, 0.0
    if config.method == "mean":
        return METHOD_MEAN, STAT_MEAN, STAT_STD, 0.0
    if config.offset == "gauss":
        return METHOD_GAUSS, STAT_MEAN, STAT_STD, config.lam / (2 * math.sqrt(head_dim))
    return METHOD_L1, STAT_MEAN, STAT_STD, config.lam


def score_pages_triton(q: torch.Tensor, key_stats: torch.Tensor, page_table: torch.Tensor, seq_lens: torch.Tensor,
                       config: UniqueConfig, select: bool = False):
    """Kernel of ``score_pages_reference`` (same arguments, scores [batch, kv_heads, max_pages] fp32).

    select=True also runs the top-k selection in the same launch and returns (scores, chosen)
    with chosen as ``select_pages_reference`` gives it.
    """
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
    if select and max_pages > MAX_PAGES:
        raise ValueError(f"fused selection holds at most {MAX_PAGES} pages per row, got {max_pages}")
    method, row_a, row_b, offset_weight = _method(config, head_dim)
    group = q_heads // kv_heads
    rows = batch * kv_heads
    scores = torch.empty(batch, kv_heads, max_pages, dtype=torch.float32, device=q.device)
    num_select = config.num_select
    if select:
        chosen = torch.empty(batch, kv_heads, num_select, dtype=torch.int32, device=q.device)
        counters = zeroed_counters("score_select", q.device, rows)
    else:
        chosen, counters = scores, scores  # unused pointers
    scratch = torch.empty(rows * RANKED_SCORES if select else 1, dtype=torch.int32, device=q.device)
    block_n = next_power_of_2(max(max_pages, 16))
    num_warps = select_warps(block_n) if select else SCORE_WARPS
    num_tiles = triton.cdiv(max_pages, PAGES_PER_TILE)
    programs = min(num_tiles, triton.cdiv(SCORE_PROGRAMS_PER_SM * _num_sms(q.device), rows))
    _score_pages_kernel[(rows, programs)](
        q, key_stats, page_table, seq_lens, scores, chosen, counters, scratch,
        offset_weight, max_pages, num_tiles, num_select, q.stride(0), q.stride(1), key_stats.stride(0), key_stats.stride(1),
        page_table.stride(0),
        KV_HEADS=kv_heads, GROUP=group, BLOCK_G=next_power_of_2(group), HEAD_DIM=head_dim,
        PAGE_SIZE=config.page_size, BLOCK_P=PAGES_PER_TILE, METHOD=method, ROW_A=row_a, ROW_B=row_b,
        FUSE_SELECT=select, SINK=config.sink_pages, LOCAL=config.local_pages,
        BLOCK_N=block_n if select else 16, BLOCK_K=next_power_of_2(num_select) if select else 16,
        WAYS=search_ways(block_n, num_warps), BLOCK_C=RANKED_SCORES, num_warps=num_warps,
        num_stages=1 if interpreting() else SCORE_STAGES,
    )
    return (scores, chosen) if select else scores
