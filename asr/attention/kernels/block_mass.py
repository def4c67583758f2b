"""Composite-query scoring for UniSparse prefill: each key block's share of each composite query's
attention; reference: ``asr.attention.block_selection.composite_shares_reference``.

Grid: (runs of ``ROWS`` composites, q_heads). A program holds ``ROWS`` composite queries of one head
(from several query blocks, so each key block is read once for all of them) and walks the key blocks
up to the last one any of its rows sees, twice: first for each row's softmax maximum and sum, then
for each key block's summed probability, written as one column of the result. No logits are kept
in memory.
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
    interpreting,
)

LOG2_E = 1.4426950408889634
ROWS = 64  # composite queries per program
SCORE_STAGES = 3


@triton.jit
def _key_block_logits(b_q, k_ptr, page_table_ptr, key_block, b_last, length, scale_log2, stride_kp,
                      stride_kt, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK: tl.constexpr):
    """[ROWS, BLOCK] logits (log2 units) of one key block, -inf past each row's last position."""
    key_pos = key_block * BLOCK + tl.arange(0, BLOCK)
    m_k = key_pos < length
    page = tl.load(page_table_ptr + key_pos // PAGE_SIZE, mask=m_k, other=0).to(tl.int64)
    offset = (key_pos % PAGE_SIZE)[:, None]
    p_k = k_ptr + page[:, None] * stride_kp + offset * stride_kt + tl.arange(0, HEAD_DIM)[None, :]
    b_k = tl.load(p_k, mask=m_k[:, None], other=0.0)
    b_s = tl.dot(b_q, tl.trans(b_k)) * scale_log2
    return tl.where(key_pos[None, :] <= b_last[:, None], b_s, float("-inf"))


@triton.jit
def _composite_shares_kernel(
    q_ptr, last_ptr, k_ptr, page_table_ptr, out_ptr,
    num_composites, num_key_blocks, length, scale_log2,
    stride_qh, stride_qa, stride_kp, stride_kh, stride_kt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
):
    i_r = tl.num_programs(0) - 1 - tl.program_id(0)  # the latest composites see the most keys: first
    i_h = tl.program_id(1)
    o_r = i_r * ROWS + tl.arange(0, ROWS)
    m_r = o_r < num_composites
    o_d = tl.arange(0, HEAD_DIM)
    p_q = q_ptr + i_h * stride_qh + o_r[:, None] * stride_qa + o_d[None, :]
    b_q = tl.load(p_q, mask=m_r[:, None], other=0.0)
    b_last = tl.load(last_ptr + o_r, mask=m_r, other=-1)
    k_head = k_ptr + (i_h // GROUP) * stride_kh
    visited = tl.max(b_last, 0) // BLOCK + 1

    b_m = tl.full([ROWS], float("-inf"), tl.float32)
    b_l = tl.zeros([ROWS], tl.float32)
    for key_block in range(0, visited):
        b_s = _key_block_logits(b_q, k_head, page_table_ptr, key_block, b_last, length, scale_log2, stride_kp,
                                stride_kt, HEAD_DIM, PAGE_SIZE, BLOCK)
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_l = b_l * tl.exp2(b_m - b_m_safe) + tl.sum(tl.exp2(b_s - b_m_safe[:, None]), 1)
        b_m = b_m_new
    b_m = tl.where(b_m == float("-inf"), 0.0, b_m)
    b_inv = 1.0 / tl.maximum(b_l, 1e-30)
    p_out = out_ptr + (i_h * num_composites + o_r) * num_key_blocks
    for key_block in range(0, visited):
        b_s = _key_block_logits(b_q, k_head, page_table_ptr, key_block, b_last, length, scale_log2, stride_kp,
                                stride_kt, HEAD_DIM, PAGE_SIZE, BLOCK)
        b_share = tl.sum(tl.exp2(b_s - b_m[:, None]), 1) * b_inv
        tl.store(p_out + key_block, b_share, mask=m_r)


def composite_shares_triton(
    queries: torch.Tensor,
    last_pos: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    length: int,
    scale: float,
    block_size: int,
) -> torch.Tensor:
    """Kernel of ``composite_shares_reference`` (same arguments and result) for fp16/bf16 caches; the
    composite queries are rounded to the cache dtype for the tensor cores."""
    q_heads, num_composites, head_dim = queries.shape
    _, kv_heads, page_size, _ = k_cache.shape
    check_device(queries, last_pos, k_cache, page_table)
    check_dtype("k_cache", k_cache, KERNEL_DTYPES)
    check_dtype("page_table", page_table, (torch.int32,))
    check_last_dim_contiguous("k_cache", k_cache)
    check_contiguous("page_table", page_table)
    if q_heads % kv_heads or head_dim not in (64, 128) or block_size % page_size or block_size < 16:
        raise ValueError(f"unsupported geometry q_heads={q_heads} kv_heads={kv_heads} d={head_dim} "
                         f"page={page_size} block={block_size}")
    queries = queries.to(k_cache.dtype).contiguous()
    last = last_pos.to(torch.int32).contiguous()
    num_key_blocks = -(-length // block_size)
    out = torch.zeros(q_heads, num_composites, num_key_blocks, dtype=torch.float32, device=queries.device)
    _composite_shares_kernel[(triton.cdiv(num_composites, ROWS), q_heads)](
        queries, last, k_cache, page_table, out,
        num_composites, num_key_blocks, length, scale * LOG2_E,
        queries.stride(0), queries.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        GROUP=q_heads // kv_heads, HEAD_DIM=head_dim, PAGE_SIZE=page_size, BLOCK=block_size, ROWS=ROWS,
        num_warps=4, num_stages=1 if interpreting() else SCORE_STAGES,
    )
    return out
