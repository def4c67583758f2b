"""Page scoring from key statistics, optionally fused with top-k selection; reference:
``asr.attention.scoring.score_pages_reference`` (+ ``select_pages_reference`` when fused).

Every method is two dot products per page with per-dim weights folded over the GQA group first:
unique/gauss ``mean . sum_g q + (std^2) . lam sum_g q^2 / (2 sqrt d)``, unique/l1
``mean . sum_g q + std . lam sum_g |q|``, quest ``max . sum_g relu(q) + min . sum_g min(q, 0)``,
mean ``mean . sum_g q``. So a page costs two stat rows (one for ``mean``) whatever the group size.

Grid: (batch * kv_heads, programs per row); a program scores one contiguous run of
``pages_per_program`` pages in tiles of PAGES_PER_TILE, so even a single sequence keeps every SM
busy. Fused selection is a two-level tournament in the same launch, so with few rows no one
program ranks a whole row: a row is cut into groups of ``group_pages`` pages (one group, the
whole row, once rows fill the SMs); the program that finishes a group
last (a per-group counter) takes the group's top ``num_select`` pages (forced pages first) and
writes them, in page order, as the group's candidates; the program that finishes the row's last
group (a per-row counter) takes the top ``num_select`` of the union of candidates and writes the
chosen logical pages and their physical ids. Every page of the global top-k is in its group's
top-k under the same order (score, then lower page), so the result is exact. Counters are reset
by the programs that read them last.
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
from asr.attention.kernels.selection import (
    MAX_PAGES,
    MIN_KEY,
    RANKED_SCORES,
    _emit_chosen,
    _forced_mask,
    _ordered_key,
    _top_mask,
    search_ways,
    select_warps,
)

METHOD_GAUSS, METHOD_L1, METHOD_QUEST, METHOD_MEAN = 0, 1, 2, 3
PAGES_PER_TILE = 64  # pages scored per loop step
SCORE_PROGRAMS_PER_SM = 4  # unfused: the grid covers the SMs about this many times (4 beat 1 and 2 on the H100)
FUSED_PROGRAMS_PER_SM = 1  # fused: the selection's registers leave one resident program per SM (1 beat 2 and 4)
MAX_PAGES_PER_PROGRAM = 1024  # unfused: longest run of pages one program scores
SCORE_WARPS = 8  # fewest warps of a scoring program
SCORE_STAGES = 3  # software pipelining depth of the tile loop


@triton.jit
def _score_pages_kernel(
    q_ptr, stats_ptr, page_table_ptr, seq_lens_ptr, scores_ptr, chosen_ptr, physical_ptr, counter_ptr,
    cand_key_ptr, cand_page_ptr, scratch_ptr,
    offset_weight, max_pages, num_select, num_groups, pages_per_program, programs_per_group,
    stride_qb, stride_qh, stride_sp, stride_sh, stride_tb,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_P: tl.constexpr, METHOD: tl.constexpr,
    ROW_A: tl.constexpr, ROW_B: tl.constexpr, FUSE_SELECT: tl.constexpr,
    SINK: tl.constexpr, LOCAL: tl.constexpr, GROUP_PAGES: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_F: tl.constexpr, WAYS: tl.constexpr, BLOCK_C: tl.constexpr,
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
    page_table_row_ptr = page_table_ptr + i_b * stride_tb
    first_page = i_p * pages_per_program
    for tile_page in range(first_page, tl.minimum(first_page + pages_per_program, max_pages), BLOCK_P):
        o_p = tile_page + tl.arange(0, BLOCK_P)
        m_p = o_p < num_pages
        physical = tl.load(page_table_row_ptr + o_p, mask=m_p, other=0).to(tl.int64)
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
        # level 1: the last program of a group picks the group's candidates
        i_grp = i_p // programs_per_group
        group_counter = counter_ptr + i_bh * (num_groups + 1) + i_grp
        group_size = tl.minimum(programs_per_group, tl.num_programs(1) - i_grp * programs_per_group)
        tl.debug_barrier()  # every thread's scores are stored before the counter releases them
        if tl.atomic_add(group_counter, 1, sem="acq_rel") == group_size - 1:
            tl.atomic_xchg(group_counter, 0)
            o_n = i_grp * GROUP_PAGES + tl.arange(0, GROUP_PAGES)
            m_valid = o_n < num_pages
            b_score = tl.load(row_ptr + o_n, mask=m_valid, other=float("-inf"), cache_modifier=".cg")
            m_forced = _forced_mask(o_n, num_pages, SINK, LOCAL)
            need = num_select - tl.sum(m_forced.to(tl.int32), 0)
            b_key = _ordered_key(b_score)
            scratch_row_ptr = scratch_ptr + (i_bh * (num_groups + 1) + i_grp) * BLOCK_C
            m_take = m_forced | _top_mask(b_key, m_valid & ~m_forced, need, scratch_row_ptr, WAYS, BLOCK_C)
            if num_groups == 1:  # the group's winners are the row's
                _emit_chosen(m_take, o_n, chosen_ptr + i_bh * num_select, physical_ptr + i_bh * num_select,
                             page_table_row_ptr, num_select, BLOCK_K)
            else:
                o_k = tl.arange(0, BLOCK_K)
                cand_offset = (i_bh * num_groups + i_grp) * BLOCK_K
                position = tl.cumsum(m_take.to(tl.int32), 0) - 1
                tl.store(cand_key_ptr + cand_offset + o_k, tl.full([BLOCK_K], MIN_KEY, tl.int32))
                tl.store(cand_page_ptr + cand_offset + o_k, tl.full([BLOCK_K], -1, tl.int32))
                tl.debug_barrier()
                tl.store(cand_key_ptr + cand_offset + position, b_key, mask=m_take)
                tl.store(cand_page_ptr + cand_offset + position, o_n, mask=m_take)
                # level 2: the last group of a row picks from the union of the groups' candidates
                row_counter = counter_ptr + i_bh * (num_groups + 1) + num_groups
                tl.debug_barrier()
                if tl.atomic_add(row_counter, 1, sem="acq_rel") == num_groups - 1:
                    tl.atomic_xchg(row_counter, 0)
                    o_f = tl.arange(0, BLOCK_F)
                    m_f = o_f < num_groups * BLOCK_K
                    c_key = tl.load(cand_key_ptr + i_bh * num_groups * BLOCK_K + o_f, mask=m_f, other=MIN_KEY,
                                    cache_modifier=".cg")
                    c_page = tl.load(cand_page_ptr + i_bh * num_groups * BLOCK_K + o_f, mask=m_f, other=-1,
                                     cache_modifier=".cg")
                    c_forced = _forced_mask(c_page, num_pages, SINK, LOCAL)
                    need = num_select - tl.sum(c_forced.to(tl.int32), 0)
                    scratch_row_ptr = scratch_ptr + (i_bh * (num_groups + 1) + num_groups) * BLOCK_C
                    c_take = c_forced | _top_mask(c_key, (c_page >= 0) & ~c_forced, need, scratch_row_ptr, WAYS, BLOCK_C)
                    _emit_chosen(c_take, c_page, chosen_ptr + i_bh * num_select, physical_ptr + i_bh * num_select,
                                 page_table_row_ptr, num_select, BLOCK_K)


def _method(config: UniqueConfig, head_dim: int) -> tuple[int, int, int, float]:
    """(method id, stat row A, stat row B, weight of the offset term)."""
    if config.method == "quest":
        return METHOD_QUEST, STAT_MAX, STAT_MIN, 0.0
    if config.method == "mean":
        return METHOD_MEAN, STAT_MEAN, STAT_STD, 0.0
    if config.offset == "gauss":
        return METHOD_GAUSS, STAT_MEAN, STAT_STD, config.lam / (2 * math.sqrt(head_dim))
    return METHOD_L1, STAT_MEAN, STAT_STD, config.lam


def plan_groups(rows: int, max_pages: int, block_k: int, num_sms: int) -> int:
    """Pages per selection group (a power of two). Few rows: about sqrt(max_pages * block_k), so
    a group's top-k and the final top-k over num_groups * block_k candidates rank about as many
    scores each; but no more groups than leave each an SM (rows >= SMs: one group, the whole row)."""
    balanced = max(PAGES_PER_TILE, next_power_of_2(math.isqrt(max_pages * block_k)))
    most_groups = max(1, num_sms // rows)
    fewest_pages = next_power_of_2(triton.cdiv(max_pages, 1 << (most_groups.bit_length() - 1)))
    return max(balanced, fewest_pages)


def plan_pages_per_program(rows: int, max_pages: int, most: int, programs_per_sm: int, num_sms: int) -> int:
    """Pages per scoring program (a power of two, PAGES_PER_TILE to ``most``) so that the grid
    covers the SMs about ``programs_per_sm`` times. Depends on shapes only (graph-safe)."""
    programs_per_row = triton.cdiv(programs_per_sm * num_sms, rows)
    return min(most, max(PAGES_PER_TILE, next_power_of_2(triton.cdiv(max_pages, programs_per_row))))


def score_pages_triton(q: torch.Tensor, key_stats: torch.Tensor, page_table: torch.Tensor, seq_lens: torch.Tensor,
                       config: UniqueConfig, select: bool = False):
    """Kernel of ``score_pages_reference`` (same arguments, scores [batch, kv_heads, max_pages] fp32).

    select=True also selects in the same launch and returns (scores, chosen, chosen_physical):
    chosen [batch, kv_heads, num_select] int32 as ``select_pages_reference`` gives it and
    chosen_physical the same pages' ids in ``page_table`` (-1 padded).
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
    num_select = config.num_select
    block_k = next_power_of_2(num_select)
    device = q.device
    scores = torch.empty(batch, kv_heads, max_pages, dtype=torch.float32, device=device)
    if select:
        group_pages = plan_groups(rows, max_pages, block_k, _num_sms(device))
        num_groups = triton.cdiv(max_pages, group_pages)
        block_f = next_power_of_2(num_groups * block_k)
        pages_per_program = plan_pages_per_program(rows, max_pages, group_pages, FUSED_PROGRAMS_PER_SM,
                                                   _num_sms(device))
        chosen = torch.empty(batch, kv_heads, num_select, dtype=torch.int32, device=device)
        physical = torch.empty_like(chosen)
        counters = zeroed_counters("score_select", device, rows * (num_groups + 1))
        cand_keys = torch.empty(rows * num_groups * block_k, dtype=torch.int32, device=device)
        cand_pages = torch.empty_like(cand_keys)
        scratch = torch.empty(rows * (num_groups + 1) * RANKED_SCORES, dtype=torch.int32, device=device)
        num_warps = max(SCORE_WARPS, select_warps(max(group_pages, block_f)))
        ways = search_ways(max(group_pages, block_f), num_warps)
    else:
        group_pages = num_groups = block_f = ways = 16  # unused
        pages_per_program = plan_pages_per_program(rows, max_pages, MAX_PAGES_PER_PROGRAM, SCORE_PROGRAMS_PER_SM,
                                                   _num_sms(device))
        chosen = physical = counters = cand_keys = cand_pages = scratch = scores  # unused pointers
        num_warps = SCORE_WARPS
    programs = triton.cdiv(max_pages, pages_per_program)
    _score_pages_kernel[(rows, programs)](
        q, key_stats, page_table, seq_lens, scores, chosen, physical, counters, cand_keys, cand_pages, scratch,
        offset_weight, max_pages, num_select, num_groups, pages_per_program, group_pages // pages_per_program,
        q.stride(0), q.stride(1), key_stats.stride(0),
        key_stats.stride(1), page_table.stride(0),
        KV_HEADS=kv_heads, GROUP=group, BLOCK_G=next_power_of_2(group), HEAD_DIM=head_dim,
        PAGE_SIZE=config.page_size, BLOCK_P=PAGES_PER_TILE, METHOD=method,
        ROW_A=row_a, ROW_B=row_b, FUSE_SELECT=select, SINK=config.sink_pages, LOCAL=config.local_pages,
        GROUP_PAGES=group_pages, BLOCK_K=block_k, BLOCK_F=block_f, WAYS=ways, BLOCK_C=RANKED_SCORES,
        num_warps=num_warps, num_stages=1 if interpreting() else SCORE_STAGES,
    )
    return (scores, chosen, physical) if select else scores
