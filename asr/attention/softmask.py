"""Soft top-k page mask for sparsity-aware fine-tuning of full causal sequences.

Each query scores the complete pages before its local window from their key mean/std (the same
scores decoding uses), takes the k-th best as its threshold tau, and weights every key of a page
by ``sigmoid((s - tau) / T)`` — applied as an additive log-mask on the attention logits. Sink and
local pages stay unmasked. As T -> 0 the mask becomes the hard top-k mask (the k-th page itself
sits at 1/2). No auxiliary loss; gradients reach q and k through the scores and tau.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from asr.attention.config import UniqueConfig
from asr.attention.page_stats import NUM_STATS, STAT_MAX, STAT_MEAN, STAT_MIN, STAT_STD
from asr.attention.scoring import score_from_stats, upcast


def sequence_page_stats(
    k: torch.Tensor, page_size: int, key_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Key statistics of consecutive pages of full sequences (differentiable).

    k: [batch, kv_heads, seq, head_dim]; key_lengths: [batch] int, the valid keys of each row
    (right padding; default: all ``seq``). Returns [batch, kv_heads, pages, NUM_STATS, head_dim]
    float32 (float64 for float64 keys); a partial page uses only its valid keys, and a page with
    none holds zeros.
    """
    batch, kv_heads, seq, head_dim = k.shape
    pages = -(-seq // page_size)
    keys = F.pad(upcast(k), (0, 0, 0, pages * page_size - seq)).view(
        batch, kv_heads, pages, page_size, head_dim
    )
    lengths = torch.full((batch,), seq, device=k.device) if key_lengths is None else key_lengths
    positions = torch.arange(pages * page_size, device=k.device)
    valid = (positions[None, :] < lengths[:, None]).view(batch, 1, pages, page_size, 1)
    count = valid.sum(dim=3).to(keys.dtype)  # [batch, 1, pages, 1]
    filled = count > 0
    count = count.clamp(min=1)
    mean = torch.where(valid, keys, 0.0).sum(dim=3) / count
    var = torch.where(valid, (keys - mean[:, :, :, None]) ** 2, 0.0).sum(dim=3) / count
    std = (var + 1e-12).sqrt()
    kmin = torch.where(filled, torch.where(valid, keys, float("inf")).amin(dim=3), 0.0)
    kmax = torch.where(filled, torch.where(valid, keys, float("-inf")).amax(dim=3), 0.0)
    stats = [None] * NUM_STATS
    stats[STAT_MEAN], stats[STAT_STD], stats[STAT_MIN], stats[STAT_MAX] = mean, std, kmin, kmax
    return torch.stack(stats, dim=3)


def soft_page_log_mask(
    q: torch.Tensor, k: torch.Tensor, config: UniqueConfig, temperature: float
) -> torch.Tensor:
    """Per-query, per-page additive log-mask.

    q: [batch, q_heads, seq, head_dim]; k: [batch, kv_heads, seq, head_dim] (positions aligned,
    causal). Returns [batch, kv_heads, seq, pages] float32: 0 for sink/local pages and for
    queries whose earlier pages fit the budget, ``logsigmoid((s - tau)/T)`` elsewhere, and
    ``-inf`` for pages wholly in the future.
    """
    seq = q.shape[2]
    page_size = config.page_size
    stats = sequence_page_stats(k, page_size)
    pages = stats.shape[2]
    scores = score_from_stats(q, stats, config.method, config.offset, config.lam)  # [b, hkv, seq, pages]
    query_page = torch.arange(seq, device=q.device) // page_size  # [seq]
    page_idx = torch.arange(pages, device=q.device)
    future = page_idx[None, :] > query_page[:, None]
    forced = (page_idx[None, :] < config.sink_pages) | (
        page_idx[None, :] > query_page[:, None] - config.local_pages
    )
    candidate = ~future & ~forced  # [seq, pages]
    free_budget = config.num_select - config.sink_pages - config.local_pages
    candidates = scores.masked_fill(~candidate, float("-inf"))
    num_candidates = candidate.sum(dim=1)  # [seq]
    if free_budget > 0 and pages > 0:
        kth = min(free_budget, pages)
        tau = candidates.topk(kth, dim=-1).values[..., kth - 1 : kth]
    else:
        tau = torch.full_like(scores[..., :1], float("inf"))
    keep_soft = candidate & (num_candidates > free_budget)[:, None]  # [seq, pages]
    scaled = torch.where(keep_soft, (scores - tau) / temperature, torch.zeros_like(scores))
    log_mask = torch.where(keep_soft, F.logsigmoid(scaled), torch.zeros_like(scores))
    return log_mask.masked_fill(future, float("-inf"))


def soft_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: UniqueConfig, temperature: float
) -> torch.Tensor:
    """Causal attention with the soft page mask (reference; training-time).

    q: [batch, q_heads, seq, head_dim]; k, v: [batch, kv_heads, seq, head_dim].
    Returns [batch, q_heads, seq, head_dim] in q's dtype.
    """
    q_heads, seq, head_dim = q.shape[1:]
    group = q_heads // k.shape[1]
    page_mask = soft_page_log_mask(q, k, config, temperature)  # [b, hkv, seq, pages]
    key_mask = page_mask.repeat_interleave(config.page_size, dim=-1)[..., :seq]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    key_mask = key_mask.masked_fill(~causal, float("-inf")).repeat_interleave(group, dim=1)
    logits = torch.einsum("bhtd,bhsd->bhts", upcast(q), upcast(k).repeat_interleave(group, dim=1))
    probs = (logits / math.sqrt(head_dim) + key_mask).softmax(dim=-1)
    return torch.einsum("bhts,bhsd->bhtd", probs, upcast(v).repeat_interleave(group, dim=1)).to(q.dtype)
