"""Prefill attention over the paged cache, dense or block-sparse (UniSparse).

A prefill appends ``n`` tokens to one sequence after ``start`` cached ones; their K/V are already in
the pages (written in full, so page statistics stay exact), and query ``i`` sits at position
``start + i``. Block-sparse prefill attends, per kv head (its query heads alike) and query block,
only the key blocks ``asr.attention.block_selection`` chose (causal inside the diagonal block);
choosing every block is dense causal attention. The new tokens may be a token tree
(``asr.llm.token_tree``): then each attends the chosen blocks' cached keys and, of the new keys, the
ones its ``tree`` row marks (its ancestors) instead of every earlier one.
"""

from __future__ import annotations

import torch

from asr.attention import cpu
from asr.attention.block_selection import estimate_block_mass, prefill_blocks, select_blocks
from asr.attention.config import UniSparseConfig
from asr.attention.paged_cache import gather_sequence
from asr.attention.shared_selection import SharedSelection


def block_sparse_prefill_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    start: int,
    scale: float,
    blocks: torch.Tensor | None,
    block_size: int,
    tree: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of the new queries over the sequence's keys, restricted to chosen key blocks.

    q: [n, q_heads, d] at positions ``start ..``; k_cache, v_cache: [num_pages, kv_heads, P, d] (one
    layer, the new tokens included); page_table: [>= pages] int; blocks: [kv_heads, query blocks,
    width] int key-block indices, -1 = unused (``select_blocks``), or None for every block; tree:
    [n, n] bool, the new keys each query sees (None: causally). Returns [n, q_heads, d] in q's dtype
    (float32 arithmetic).
    """
    n, q_heads, head_dim = q.shape
    length = start + n
    keys = gather_sequence(k_cache, page_table, length).float()
    values = gather_sequence(v_cache, page_table, length).float()
    group = q_heads // keys.shape[1]
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    logits = torch.einsum("nhd,thd->hnt", q.float(), keys) * scale
    query_pos = torch.arange(start, length, device=q.device)
    key_pos = torch.arange(length, device=q.device)
    if tree is None:
        allowed = (key_pos[None, :] <= query_pos[:, None])[None]  # [1, n, length]
    else:
        cached = torch.ones(n, start, dtype=torch.bool, device=q.device)
        allowed = torch.cat([cached, tree.to(q.device)], 1)[None]
    if blocks is not None:
        first, num_query_blocks = prefill_blocks(start, length, block_size)
        num_key_blocks = -(-length // block_size)
        chosen = torch.zeros(*blocks.shape[:2], num_key_blocks + 1, dtype=torch.bool, device=q.device)
        chosen.scatter_(-1, blocks.long().masked_fill(blocks < 0, num_key_blocks), True)
        chosen = chosen.repeat_interleave(group, dim=0)  # the query heads of a kv head share its blocks
        rows = chosen[:, query_pos // block_size - first, :num_key_blocks]  # [q_heads, n, key blocks]
        allowed = allowed & rows[:, :, key_pos // block_size]
    probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hnt,thd->nhd", probs, values).to(q.dtype)


def block_sparse_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    start: int,
    scale: float,
    blocks: torch.Tensor,
    block_size: int,
    tree: torch.Tensor | None = None,
) -> torch.Tensor:
    """Public block-sparse prefill attention (arguments as ``block_sparse_prefill_reference``, with
    ``blocks`` sorted ascending as ``select_blocks`` gives them): the Triton kernel on CUDA for
    fp16/bf16 caches (causal only: a tree goes to the reference, a few dozen queries), the CPU path on
    the CPU, the reference elsewhere."""
    if q.is_cuda and k_cache.dtype in (torch.float16, torch.bfloat16) and tree is None:
        from asr.attention.kernels.prefill import block_sparse_prefill_triton

        return block_sparse_prefill_triton(q, k_cache, v_cache, page_table, start, scale, blocks, block_size)
    if q.device.type == "cpu":
        return cpu.block_sparse_prefill_cpu(q, k_cache, v_cache, page_table, start, scale, blocks, block_size,
                                            tree)
    return block_sparse_prefill_reference(q, k_cache, v_cache, page_table, start, scale, blocks, block_size,
                                          tree)


def unisparse_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    start: int,
    scale: float,
    config: UniSparseConfig,
    key_stats: torch.Tensor | None = None,
    shared: tuple[SharedSelection, int] | None = None,
    tree: torch.Tensor | None = None,
) -> torch.Tensor:
    """UniSparse prefill attention of one layer: estimate block masses from composite queries, choose
    the key blocks, attend over them (arguments as ``block_sparse_prefill_reference``; key_stats: the
    cache's page statistics of the layer, for ``estimate_block_mass``; shared: a ``SharedSelection``
    and this layer's index, to reuse blocks chosen for these positions before; tree: as in
    ``block_sparse_prefill_reference``: the blocks are chosen as for causal queries, and every query
    block of a tree also attends all the blocks of new keys up to its own, so each node sees all its
    ancestors). Returns [n, q_heads, d]."""
    length = start + q.shape[0]

    def choose() -> torch.Tensor:
        mass = estimate_block_mass(q, k_cache, page_table, start, scale, config, key_stats)
        return select_blocks(mass, start, length, config, tree=tree is not None)[0]

    blocks = choose() if shared is None else shared[0].blocks(shared[1], start, length, config.block_size,
                                                              choose)
    return block_sparse_prefill(q, k_cache, v_cache, page_table, start, scale, blocks, config.block_size,
                                tree)
