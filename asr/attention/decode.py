"""Decode attention over a paged KV cache: exact softmax over all pages or over chosen pages."""

from __future__ import annotations

import torch

from asr.attention import cpu
from asr.attention.config import UniqueConfig
from asr.attention.scoring import score_pages_reference
from asr.attention.selection import select_pages


def score_pages(
    q: torch.Tensor,
    key_stats: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    config: UniqueConfig,
    host_seq_lens: list[int] | None = None,
) -> torch.Tensor:
    """Public page scoring (arguments as ``asr.attention.scoring.score_pages_reference``): kernel on
    CUDA, the CPU path on the CPU (``host_seq_lens``: the lengths on the host if the caller has
    them), the reference elsewhere. It lives here, beside its one caller, so that ``scoring.py``
    (references) and ``cpu.py`` (which builds on them) import in one direction only."""
    if q.is_cuda:
        from asr.attention.kernels.scoring import score_pages_triton

        return score_pages_triton(q, key_stats, page_table, seq_lens, config)
    if q.device.type == "cpu":
        return cpu.score_pages_cpu(q, key_stats, page_table, seq_lens, config, host_seq_lens)
    return score_pages_reference(q, key_stats, page_table, seq_lens, config)


def gather_attended(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    chosen_pages: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys and values each (sequence, kv head) attends, gathered from the pages.

    Arguments as ``paged_decode_reference``. Returns keys, values: [batch, kv_heads, n, head_dim]
    (cache dtype; slots past a sequence's end or in unused pages zeroed) and token_ok:
    [batch, kv_heads, n] bool, with n = pages attended * page_size.
    """
    batch = page_table.shape[0]
    _, kv_heads, page_size, head_dim = k_cache.shape
    if chosen_pages is None:
        logical = torch.arange(page_table.shape[1], device=k_cache.device)
        chosen_pages = logical.expand(batch, kv_heads, -1)
    chosen = chosen_pages.long()
    num_select = chosen.shape[-1]
    num_pages = (seq_lens.long() + page_size - 1) // page_size
    page_ok = (chosen >= 0) & (chosen < num_pages[:, None, None])
    physical = (
        page_table.long().gather(1, chosen.clamp(min=0).view(batch, -1)).view(batch, kv_heads, num_select)
    )
    head = torch.arange(kv_heads, device=k_cache.device)[None, :, None]
    position = chosen[..., None] * page_size + torch.arange(page_size, device=k_cache.device)
    token_ok = (page_ok[..., None] & (position < seq_lens.long()[:, None, None, None])).flatten(2)
    # slack past a sequence's end is never read: zero it (it may hold anything, NaN included)
    keys = k_cache[physical, head].flatten(2, 3).masked_fill(~token_ok[..., None], 0.0)
    values = v_cache[physical, head].flatten(2, 3).masked_fill(~token_ok[..., None], 0.0)
    return keys, values, token_ok


def paged_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    chosen_pages: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query token per sequence attends over its cached keys.

    q: [batch, q_heads, head_dim]; k_cache, v_cache: [num_pages, kv_heads, page_size, head_dim];
    page_table: [batch, max_pages] int; seq_lens: [batch] int (>= 1);
    chosen_pages: [batch, kv_heads, num_select] int logical page indices (-1 = unused), or None
    for dense attention over every page.
    Returns out: [batch, q_heads, head_dim] (q's dtype) and lse: [batch, q_heads] float32, the
    natural-log sum of exp(scale * q . k) over the attended keys.
    """
    batch, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    keys, values, token_ok = gather_attended(k_cache, v_cache, page_table, seq_lens, chosen_pages)
    qg = q.float().view(batch, kv_heads, q_heads // kv_heads, head_dim)
    logits = torch.einsum("bhgd,bhnd->bhgn", qg, keys.float()) * scale
    logits = logits.masked_fill(~token_ok[:, :, None], float("-inf"))
    lse = logits.logsumexp(dim=-1)
    probs = (logits - lse[..., None]).exp()
    out = torch.einsum("bhgn,bhnd->bhgd", probs, values.float())
    return out.reshape(batch, q_heads, head_dim).to(q.dtype), lse.reshape(batch, q_heads)


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    chosen_pages: torch.Tensor | None = None,
    need_lse: bool = True,
    chosen_physical: torch.Tensor | None = None,
    host_seq_lens: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Public decode attention (arguments as ``paged_decode_reference``): kernel on CUDA for
    fp16/bf16 caches; elsewhere the reference, or the CPU path when ``need_lse`` is False (then the
    returned lse is None). ``chosen_physical``: the chosen pages' ids in ``page_table`` if the
    selector gave them (the kernel then skips the page-table lookup); ``host_seq_lens``: the
    lengths on the host if the caller has them (``DecodeMetadata``), for the CPU path."""
    if q.is_cuda and k_cache.dtype in (torch.float16, torch.bfloat16):
        from asr.attention.kernels.decode import paged_decode_triton

        return paged_decode_triton(
            q, k_cache, v_cache, page_table, seq_lens, scale, chosen_pages, chosen_physical
        )
    if not need_lse:
        return cpu.paged_decode_cpu(
            q, k_cache, v_cache, page_table, seq_lens, scale, chosen_pages, host_seq_lens
        ), None
    return paged_decode_reference(q, k_cache, v_cache, page_table, seq_lens, scale, chosen_pages)


def unique_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    key_stats: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    config: UniqueConfig,
    need_lse: bool = True,
    host_seq_lens: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Public sparse decode: score the pages, take the top ``config.num_select`` per sequence and
    kv head, attend over them (arguments as ``paged_decode_reference`` plus key_stats
    [num_pages, kv_heads, NUM_STATS, head_dim]). On CUDA with fp16/bf16 caches: the scoring
    kernel that also selects (chosen pages and their physical ids), then the decode kernel over
    those pages (and its merge), sizes from shapes only (graph-capturable); elsewhere the
    references (or the CPU paths when ``need_lse`` is False; ``host_seq_lens`` as in
    ``paged_decode``)."""
    if q.is_cuda and k_cache.dtype in (torch.float16, torch.bfloat16):
        from asr.attention.kernels.decode import paged_decode_triton
        from asr.attention.kernels.scoring import score_select_triton

        _, chosen, chosen_physical = score_select_triton(q, key_stats, page_table, seq_lens, config)
        return paged_decode_triton(q, k_cache, v_cache, page_table, seq_lens, scale, chosen, chosen_physical)
    scores = score_pages(q, key_stats, page_table, seq_lens, config, host_seq_lens)
    chosen = select_pages(scores, seq_lens, config)
    return paged_decode(q, k_cache, v_cache, page_table, seq_lens, scale, chosen, need_lse,
                        host_seq_lens=host_seq_lens)
