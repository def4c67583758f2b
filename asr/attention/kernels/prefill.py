"""Block-sparse prefill attention (flash-attention forward) over chosen key blocks of the paged cache;
reference: ``asr.attention.prefill.block_sparse_prefill_reference``.

Grid: (query blocks, q_heads). A program owns one query block (``BLOCK`` positions aligned to
multiples of ``BLOCK``, only the new queries loaded) of one query head and walks the key blocks its
kv head chose (``select_blocks``: ascending, the diagonal last). Every block before the diagonal is
full and entirely in the past, so it is attended without a mask; the diagonal block last, with the
causal and end-of-sequence masks. Keys and values are read in place from their pages through the
page table (``BLOCK`` is a multiple of the page size).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from asr.attention.kernels.common import (
    KERNEL_DTYPES,
    check_device,
    check_dtype,
    check_last_dim_contiguous,
    interpreting,
)

LOG2_E = 1.4426950408889634
PREFILL_STAGES = 3  # software pipelining depth of the K/V loads (2 for 128x128 tiles: shared memory)


@triton.jit
def _attend_block(b_q, b_m, b_l, b_acc, k_ptr, v_ptr, page_table_ptr, key_block, query_pos, length,
                  scale_log2, stride_kp, stride_kt, stride_vp, stride_vt,
                  HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK: tl.constexpr, MASKED: tl.constexpr):
    """One key block into the running (max, sum, accumulator) of a query block (log2 units).
    k_ptr / v_ptr point at the kv head's rows; MASKED: the diagonal block (causal, end of sequence)."""
    o_n = tl.arange(0, BLOCK)
    o_d = tl.arange(0, HEAD_DIM)
    key_pos = key_block * BLOCK + o_n
    if MASKED:
        m_k = key_pos < length
        page = tl.load(page_table_ptr + key_pos // PAGE_SIZE, mask=m_k, other=0).to(tl.int64)
    else:
        page = tl.load(page_table_ptr + key_pos // PAGE_SIZE).to(tl.int64)
    offset = (key_pos % PAGE_SIZE)[:, None]
    p_k = k_ptr + page[:, None] * stride_kp + offset * stride_kt + o_d[None, :]
    p_v = v_ptr + page[:, None] * stride_vp + offset * stride_vt + o_d[None, :]
    if MASKED:
        b_k = tl.load(p_k, mask=m_k[:, None], other=0.0)
        b_v = tl.load(p_v, mask=m_k[:, None], other=0.0)
    else:
        b_k = tl.load(p_k)
        b_v = tl.load(p_v)
    b_s = tl.dot(b_q, tl.trans(b_k)) * scale_log2
    if MASKED:
        b_s = tl.where((key_pos[None, :] <= query_pos[:, None]) & m_k[None, :], b_s, float("-inf"))
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    b_alpha = tl.exp2(b_m - b_m_new)
    b_p = tl.exp2(b_s - b_m_new[:, None])
    b_l = b_l * b_alpha + tl.sum(b_p, 1)
    b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
    return b_m_new, b_l, b_acc


@triton.jit
def _block_sparse_prefill_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, page_table_ptr, blocks_ptr, counts_ptr,
    start, length, scale_log2,
    stride_qt, stride_qh, stride_kp, stride_kh, stride_kt, stride_vp, stride_vh, stride_vt,
    stride_ot, stride_oh, stride_bh, stride_bq, stride_ch,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    i_qb = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest rows (latest blocks) start first
    i_h = tl.program_id(1)
    own_block = start // BLOCK + i_qb
    query_pos = own_block * BLOCK + tl.arange(0, BLOCK)
    m_q = (query_pos >= start) & (query_pos < length)
    o_d = tl.arange(0, HEAD_DIM)
    p_q = q_ptr + (query_pos - start)[:, None] * stride_qt + i_h * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_q[:, None], other=0.0)
    k_head = k_ptr + (i_h // GROUP) * stride_kh
    v_head = v_ptr + (i_h // GROUP) * stride_vh

    # the running max starts finite: the diagonal block gives every row a key (its first position)
    b_m = tl.full([BLOCK], -1e30, tl.float32)
    b_l = tl.zeros([BLOCK], tl.float32)
    b_acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    count = tl.load(counts_ptr + (i_h // GROUP) * stride_ch + i_qb)
    p_blocks = blocks_ptr + (i_h // GROUP) * stride_bh + i_qb * stride_bq
    for i_s in range(0, count - 1):
        key_block = tl.load(p_blocks + i_s)
        b_m, b_l, b_acc = _attend_block(b_q, b_m, b_l, b_acc, k_head, v_head, page_table_ptr, key_block,
                                        query_pos, length, scale_log2, stride_kp, stride_kt, stride_vp,
                                        stride_vt, HEAD_DIM, PAGE_SIZE, BLOCK, False)
    b_m, b_l, b_acc = _attend_block(b_q, b_m, b_l, b_acc, k_head, v_head, page_table_ptr, own_block,
                                    query_pos, length, scale_log2, stride_kp, stride_kt, stride_vp,
                                    stride_vt, HEAD_DIM, PAGE_SIZE, BLOCK, True)
    b_out = b_acc / b_l[:, None]
    p_o = o_ptr + (query_pos - start)[:, None] * stride_ot + i_h * stride_oh + o_d[None, :]
    tl.store(p_o, b_out.to(o_ptr.dtype.element_ty), mask=m_q[:, None])


def block_sparse_prefill_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    start: int,
    scale: float,
    blocks: torch.Tensor,
    block_size: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kernel of ``block_sparse_prefill_reference`` (same arguments and result) for fp16/bf16 caches;
    ``blocks`` must be ascending with the diagonal last (as ``select_blocks`` gives them). out:
    optional result buffer like q."""
    n, q_heads, head_dim = q.shape
    _, kv_heads, page_size, _ = k_cache.shape
    check_device(q, k_cache, v_cache, page_table, blocks)
    check_dtype("k_cache", k_cache, KERNEL_DTYPES)
    check_dtype("q", q, (k_cache.dtype,))
    check_dtype("v_cache", v_cache, (k_cache.dtype,))
    check_dtype("page_table", page_table, (torch.int32,))
    check_dtype("blocks", blocks, (torch.int32,))
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("page_table", page_table),
                    ("blocks", blocks)):
        check_last_dim_contiguous(name, t)
    if (q_heads % kv_heads or head_dim not in (64, 128) or block_size % page_size or block_size < 16
            or block_size & (block_size - 1)):
        raise ValueError(f"unsupported geometry q_heads={q_heads} kv_heads={kv_heads} d={head_dim} "
                         f"page={page_size} block={block_size}")
    num_query_blocks = blocks.shape[1]
    counts = (blocks >= 0).sum(-1, dtype=torch.int32)
    out = torch.empty_like(q) if out is None else out
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError("out must be like q with unit last stride")
    _block_sparse_prefill_kernel[(num_query_blocks, q_heads)](
        q, k_cache, v_cache, out, page_table, blocks, counts,
        start, start + n, scale * LOG2_E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        blocks.stride(0), blocks.stride(1), counts.stride(0),
        GROUP=q_heads // kv_heads, HEAD_DIM=head_dim, PAGE_SIZE=page_size, BLOCK=block_size,
        num_warps=4 if block_size <= 64 else 8,
        num_stages=1 if interpreting() else PREFILL_STAGES - (block_size * head_dim >= 128 * 128),
    )
    return out
