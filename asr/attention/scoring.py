"""Page scores: how much attention a query is expected to give each KV page.

All scores are in units of ``q . k`` (the attention logit times sqrt(head_dim)); with GQA a kv
head's score is the sum over the query heads of its group.
"""

from __future__ import annotations

import math

import torch

from asr.attention.config import UniqueConfig
from asr.attention.page_stats import STAT_MAX, STAT_MEAN, STAT_MIN, STAT_STD


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 if it already is (gradcheck runs the references in float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def score_from_stats(
    q: torch.Tensor, stats: torch.Tensor, method: str, offset: str = "gauss", lam: float = 1.0
) -> torch.Tensor:
    """Score pages from their key statistics, summed over each GQA group.

    q: [batch, q_heads, queries, head_dim]; stats: [batch, kv_heads, pages, NUM_STATS, head_dim].
    Returns [batch, kv_heads, queries, pages] float32 (float64 for float64 inputs).
    """
    batch, q_heads, queries, head_dim = q.shape
    kv_heads = stats.shape[1]
    qg = upcast(q).view(batch, kv_heads, q_heads // kv_heads, queries, head_dim)

    def stat_rows(stat: int) -> torch.Tensor:  # only the statistics a method uses are widened
        return upcast(stats[:, :, :, stat])

    def dot(query: torch.Tensor, stat: int) -> torch.Tensor:
        return torch.einsum("bhgtd,bhpd->bhtp", query, stat_rows(stat))

    if method == "quest":  # sum_d max(q_d min_d, q_d max_d)
        return dot(qg.clamp(min=0), STAT_MAX) + dot(qg.clamp(max=0), STAT_MIN)
    score = dot(qg, STAT_MEAN)
    if method == "mean":
        return score
    if method != "unique":
        raise ValueError(f"unknown page scoring method {method!r}")
    std = stat_rows(STAT_STD)
    if offset == "l1":
        return score + lam * torch.einsum("bhgtd,bhpd->bhtp", qg.abs(), std)
    if offset == "gauss":
        offset_term = torch.einsum("bhgtd,bhpd->bhtp", qg.square(), std.square())
        return score + lam * offset_term / (2 * math.sqrt(head_dim))
    raise ValueError(f"unknown UNIQUE offset {offset!r}")


def score_pages_reference(
    q: torch.Tensor,
    key_stats: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    config: UniqueConfig,
) -> torch.Tensor:
    """Score every page of every sequence in a paged cache.

    q: [batch, q_heads, head_dim]; key_stats: [num_pages, kv_heads, NUM_STATS, head_dim];
    page_table: [batch, max_pages] int; seq_lens: [batch] int.
    Returns [batch, kv_heads, max_pages] float32, ``-inf`` for pages past a sequence's end.
    """
    stats = key_stats[page_table.long()].transpose(1, 2)  # [batch, kv_heads, max_pages, S, d]
    scores = score_from_stats(q[:, :, None], stats, config.method, config.offset, config.lam)[:, :, 0]
    num_pages = (seq_lens.long() + config.page_size - 1) // config.page_size
    valid = torch.arange(page_table.shape[1], device=q.device)[None, :] < num_pages[:, None]
    return scores.masked_fill(~valid[:, None, :], float("-inf"))


def oracle_page_mass(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
) -> torch.Tensor:
    """True attention mass of each page, summed over each GQA group (for measuring recall).

    q: [batch, q_heads, head_dim]; k_cache: [num_pages, kv_heads, page_size, head_dim].
    Returns [batch, kv_heads, max_pages] float32; each (batch, kv head) row sums to the group size.
    """
    batch, q_heads, head_dim = q.shape
    _, kv_heads, page_size, _ = k_cache.shape
    max_pages = page_table.shape[1]
    keys = k_cache[page_table.long()].float()  # [batch, max_pages, kv_heads, page_size, d]
    keys = keys.permute(0, 2, 1, 3, 4).reshape(batch, kv_heads, max_pages * page_size, head_dim)
    qg = q.float().view(batch, kv_heads, q_heads // kv_heads, head_dim)
    logits = torch.einsum("bhgd,bhtd->bhgt", qg, keys) / math.sqrt(head_dim)
    valid = torch.arange(max_pages * page_size, device=q.device)[None, :] < seq_lens.long()[:, None]
    probs = logits.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(dim=-1)
    return probs.view(batch, kv_heads, -1, max_pages, page_size).sum(dim=(2, 4))

