"""Soft-mask attention for training, block by block over the queries (memory-safe at 16k tokens).

Computes what ``asr.attention.softmask.soft_masked_attention`` (the reference) computes, for
right-padded batches and for queries at any positions of their sequence (a KV cache ahead of them),
without ever holding ``[seq, seq]`` logits for all queries: the forward pass runs one block of
``query_block`` queries at a time under ``no_grad`` and keeps only q, k, v; the backward pass
recomputes each block with autograd and accumulates the gradients of k and v (and of the page
statistics, which then flow back into k once). Peak memory is one block's logits, probabilities
and mask, about ``batch * q_heads * query_block * seq`` float32 values each, plus q, k, v and their
gradients. A block reads only the keys up to its last query's position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from asr.attention.config import SoftMaskConfig, UniqueConfig
from asr.attention.scoring import score_from_stats, upcast
from asr.attention.softmask import sequence_page_stats


def block_page_log_mask(
    q_block: torch.Tensor,
    query_positions: torch.Tensor,
    stats: torch.Tensor,
    key_lengths: torch.Tensor,
    sparse: UniqueConfig,
    temperature: float,
) -> torch.Tensor:
    """Per-query, per-page additive log-mask of one block of queries.

    q_block: [batch, q_heads, queries, head_dim]; query_positions: [batch, queries] int, each
    query's position in its sequence; stats: [batch, kv_heads, pages, NUM_STATS, head_dim];
    key_lengths: [batch] int. Returns [batch, kv_heads, queries, pages] float32 (float64 for
    float64 inputs): 0 for sink and local pages and where a query's earlier pages fit the budget,
    ``logsigmoid((s - tau) / T)`` for the other candidates, ``-inf`` for pages past the query or
    past the row's keys.
    """
    pages = stats.shape[2]
    page_index = torch.arange(pages, device=q_block.device)
    query_page = (query_positions // sparse.page_size)[:, :, None]  # [b, t, 1]
    filled = page_index[None, :] * sparse.page_size < key_lengths[:, None]  # [b, pages]
    future = (page_index > query_page) | ~filled[:, None, :]  # [b, t, pages]
    forced = (page_index < sparse.sink_pages) | (page_index > query_page - sparse.local_pages)
    candidate = ~future & ~forced
    free_budget = sparse.num_select - sparse.sink_pages - sparse.local_pages
    scores = score_from_stats(q_block, stats, sparse.method, sparse.offset, sparse.lam)  # [b, hkv, t, p]
    keep_soft = (candidate & (candidate.sum(dim=-1, keepdim=True) > free_budget))[:, None]
    if free_budget > 0 and pages > 0:
        kth = min(free_budget, pages)
        tau = scores.masked_fill(~candidate[:, None], float("-inf")).topk(kth, dim=-1).values[..., -1:]
        tau = torch.where(torch.isfinite(tau), tau, torch.zeros_like(tau))  # rows that stay dense
    else:
        tau = torch.zeros_like(scores[..., :1])
    scaled = torch.where(keep_soft, (scores - tau) / temperature, torch.zeros_like(scores))
    log_mask = torch.where(keep_soft, F.logsigmoid(scaled), torch.zeros_like(scores))
    return log_mask.masked_fill(future[:, None], float("-inf"))


def block_attention(
    q_block: torch.Tensor,
    query_positions: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    stats: torch.Tensor | None,
    key_lengths: torch.Tensor,
    config: SoftMaskConfig,
    scale: float,
) -> torch.Tensor:
    """Attention of one block of queries over the keys before them (differentiable).

    q_block: [batch, q_heads, queries, head_dim]; query_positions: [batch, queries] int;
    k, v: [batch, kv_heads, keys, head_dim] (the keys this block can see: at least up to its last
    query); stats: page statistics of the whole sequence (None when ``config.sparse`` is None);
    key_lengths: [batch] int. Returns [batch, q_heads, queries, head_dim] in q's dtype.
    """
    batch, q_heads, queries, head_dim = q_block.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    key_index = torch.arange(keys, device=k.device)
    visible = (key_index <= query_positions[:, :, None]) & (key_index < key_lengths[:, None, None])
    if config.sparse is None:
        key_mask = torch.zeros(visible.shape, dtype=upcast(q_block).dtype, device=q_block.device)[:, None]
    else:
        pages = -(-keys // config.sparse.page_size)
        page_mask = block_page_log_mask(
            q_block, query_positions, stats[:, :, :pages], key_lengths, config.sparse, config.temperature
        )
        key_mask = page_mask.index_select(-1, key_index // config.sparse.page_size)  # [b, hkv, t, keys]
    key_mask = key_mask.masked_fill(~visible[:, None], float("-inf"))[:, :, None]  # [b, hkv, 1, t, keys]
    query = upcast(q_block).view(batch, kv_heads, q_heads // kv_heads, queries, head_dim)
    logits = torch.einsum("bhgtd,bhsd->bhgts", query, upcast(k)) * scale + key_mask
    out = torch.einsum("bhgts,bhsd->bhgtd", logits.softmax(dim=-1), upcast(v))
    return out.reshape(batch, q_heads, queries, head_dim).to(q_block.dtype)


def block_ranges(query_positions: torch.Tensor, key_lengths: torch.Tensor, keys: int, block: int):
    """(query slice, keys it reads) per block: keys up to the block's last position, within the rows'
    lengths. One host read of the positions per call."""
    queries = query_positions.shape[1]
    last = query_positions.amax(dim=0)  # [queries]
    last = F.pad(last, (0, -queries % block), value=-1).view(-1, block).amax(dim=1)
    longest = int(key_lengths.max())
    return [
        (slice(start, min(start + block, queries)), max(1, min(keys, longest, int(end) + 1)))
        for start, end in zip(range(0, queries, block), last.tolist())
    ]


class SoftMaskAttention(torch.autograd.Function):
    """Blockwise forward under no_grad; backward recomputes each block (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, query_positions, key_lengths, config: SoftMaskConfig, scale: float):
        ranges = block_ranges(query_positions, key_lengths, k.shape[2], config.query_block)
        with torch.no_grad():
            stats = None
            if config.sparse is not None:
                stats = sequence_page_stats(k, config.sparse.page_size, key_lengths)
            out = torch.empty_like(q)
            for rows, keys in ranges:
                out[:, :, rows] = block_attention(
                    q[:, :, rows], query_positions[:, rows], k[:, :, :keys], v[:, :, :keys], stats,
                    key_lengths, config, scale,
                )
        ctx.save_for_backward(q, k, v, query_positions, key_lengths)
        ctx.ranges, ctx.config, ctx.scale = ranges, config, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, query_positions, key_lengths = ctx.saved_tensors
        config = ctx.config
        grad_q = torch.zeros_like(q)
        grad_k = torch.zeros_like(k, dtype=upcast(k).dtype)
        grad_v = torch.zeros_like(v, dtype=upcast(v).dtype)
        with torch.enable_grad():
            k_for_stats = k.detach().requires_grad_(True)
            stats = stats_leaf = grad_stats = None
            if config.sparse is not None:
                stats = sequence_page_stats(k_for_stats, config.sparse.page_size, key_lengths)
                stats_leaf = stats.detach().requires_grad_(True)
                grad_stats = torch.zeros_like(stats)
            for rows, keys in ctx.ranges:
                q_block = q[:, :, rows].detach().requires_grad_(True)
                k_block = k[:, :, :keys].detach().requires_grad_(True)
                v_block = v[:, :, :keys].detach().requires_grad_(True)
                inputs = [q_block, k_block, v_block] + ([stats_leaf] if stats is not None else [])
                out = block_attention(
                    q_block, query_positions[:, rows], k_block, v_block, stats_leaf, key_lengths, config,
                    ctx.scale,
                )
                grads = torch.autograd.grad(out, inputs, grad_out[:, :, rows], allow_unused=True)
                grad_q[:, :, rows] = grads[0]
                grad_k[:, :, :keys] += grads[1]
                grad_v[:, :, :keys] += grads[2]
                if stats is not None and grads[3] is not None:
                    grad_stats += grads[3]
            if stats is not None:
                (grad_k_from_stats,) = torch.autograd.grad(stats, k_for_stats, grad_stats)
                grad_k += grad_k_from_stats
        return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None, None


def soft_mask_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: SoftMaskConfig,
    scale: float | None = None,
    key_lengths: torch.Tensor | None = None,
    query_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention with the soft page mask of ``config`` (dense when ``config.sparse`` is None).

    q: [batch, q_heads, queries, head_dim]; k, v: [batch, kv_heads, keys, head_dim] (right-padded
    rows); scale: logit scale (default ``head_dim ** -0.5``); key_lengths: [batch] int valid keys per
    row (default: all); query_positions: [batch, queries] int positions of the queries among the keys
    (default: the last ``queries`` positions, as in prefill or decode after a cache). Every query
    must see key 0 (positions >= 0) and every row must hold a key. Returns [batch, q_heads,
    queries, head_dim] in q's dtype; differentiable in q, k, v.
    """
    batch, _, queries, head_dim = q.shape
    keys = k.shape[2]
    if key_lengths is None:
        key_lengths = torch.full((batch,), keys, dtype=torch.long, device=q.device)
    if query_positions is None:
        query_positions = (torch.arange(queries, device=q.device) + keys - queries).expand(batch, queries)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    return SoftMaskAttention.apply(
        q, k, v, query_positions.long(), key_lengths.long(), config, float(scale)
    )
