"""Decode attention over a paged KV cache: exact softmax over all pages or over chosen pages."""

from __future__ import annotations

import torch

from asr.attention.config import UniqueConfig
from asr.attention.scoring import score_pages
from asr.attention.selection import MAX_KERNEL_PAGES, select_pages


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
    physical = page_table.long().gather(1, chosen.clamp(min=0).view(batch, -1)).view(batch, kv_heads, num_select)
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


def _pages_view(cache: torch.Tensor, pages: torch.Tensor) -> torch.Tensor:
    """cache[pages] ([n, kv_heads, page_size, head_dim]) as a view when the ids run consecutively
    (a lone sequence's pages usually do), else a gathered copy."""
    first = int(pages[0])
    if torch.equal(pages, torch.arange(first, first + len(pages), dtype=pages.dtype)):
        return cache[first : first + len(pages)]
    return cache[pages]


def _softmax_attend(qg: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
                    token_ok: torch.Tensor) -> torch.Tensor:
    """qg [kv_heads, group, d] over keys/values [kv_heads, n, d] (cache dtype), masked where
    ``token_ok`` [kv_heads, n] is False; matmuls in the cache dtype, softmax in float32."""
    logits = torch.matmul(qg, keys.transpose(1, 2)).float() * scale
    logits = logits.masked_fill(~token_ok[:, None, :], float("-inf"))
    return torch.matmul(torch.softmax(logits, dim=-1).to(values.dtype), values)


def _dense_row(qg: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pages: torch.Tensor, length: int,
               scale: float) -> torch.Tensor:
    """One sequence over all its tokens, read in the cache's page layout: the full pages through a
    view (no copy when their ids are consecutive), the last page only up to its fill (its slack is
    never touched, so it may hold anything)."""
    page_size = k_cache.shape[2]
    full = (length - 1) // page_size
    fill = length - full * page_size
    last_k, last_v = k_cache[pages[full], :, :fill], v_cache[pages[full], :, :fill]  # [kv_heads, fill, d]
    logits = torch.matmul(qg, last_k.transpose(1, 2)).float()
    if full:
        keys, values = _pages_view(k_cache, pages[:full]), _pages_view(v_cache, pages[:full])
        logits = torch.cat([torch.einsum("hgd,nhpd->hgnp", qg, keys).flatten(2).float(), logits], dim=-1)
    probs = torch.softmax(logits * scale, dim=-1).to(v_cache.dtype)
    out = torch.matmul(probs[..., full * page_size :], last_v)
    if full:
        kv_heads, group = qg.shape[:2]
        out = out + torch.einsum("hgnp,nhpd->hgd", probs[..., : full * page_size].view(kv_heads, group, full, page_size), values)
    return out


def paged_decode_cpu(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    chosen_pages: torch.Tensor | None = None,
    host_seq_lens: list[int] | None = None,
) -> torch.Tensor:
    """The CPU execution path when no LSE is needed (arguments as ``paged_decode_reference``; returns
    out only), one sequence at a time with lengths read on the host (``host_seq_lens``, planned once
    per step; read from ``seq_lens`` when not given). Dense attention reads the pages in place;
    sparse attention gathers the chosen pages and masks their unused slots."""
    _, q_heads, head_dim = q.shape
    _, kv_heads, page_size, _ = k_cache.shape
    outs = []
    for row, length in enumerate(seq_lens.tolist() if host_seq_lens is None else host_seq_lens):
        num_pages = -(-length // page_size)
        pages = page_table[row, :num_pages].long()
        qg = q[row].to(k_cache.dtype).view(kv_heads, q_heads // kv_heads, head_dim)
        if chosen_pages is None:
            out = _dense_row(qg, k_cache, v_cache, pages, length, scale)
        else:
            chosen = chosen_pages[row].long()  # [kv_heads, num_select]
            page_ok = (chosen >= 0) & (chosen < num_pages)
            # (page, head) blocks by one index_select over [pages * kv_heads, P, d] (5x faster here
            # than indexing with a page and a head tensor)
            blocks = (pages[chosen.clamp(0, num_pages - 1)] * kv_heads + torch.arange(kv_heads)[:, None]).flatten()
            position = chosen[..., None] * page_size + torch.arange(page_size)
            token_ok = (page_ok[..., None] & (position < length)).flatten(1)  # [kv_heads, n]
            keys = k_cache.flatten(0, 1).index_select(0, blocks).view(kv_heads, -1, head_dim)
            values = v_cache.flatten(0, 1).index_select(0, blocks).view(kv_heads, -1, head_dim)
            values = values.masked_fill(~token_ok[..., None], 0.0)
            out = _softmax_attend(qg, keys, values, scale, token_ok)
        outs.append(out.reshape(q_heads, head_dim))
    return torch.stack(outs).to(q.dtype)


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

        return paged_decode_triton(q, k_cache, v_cache, page_table, seq_lens, scale, chosen_pages, chosen_physical)
    if not need_lse:
        return paged_decode_cpu(q, k_cache, v_cache, page_table, seq_lens, scale, chosen_pages, host_seq_lens), None
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
    kernel, the top-k kernel (chosen pages and their physical ids), then the decode kernel over
    those pages (and its merge), sizes from shapes only (graph-capturable); elsewhere the
    references (or the CPU paths when ``need_lse`` is False; ``host_seq_lens`` as in
    ``paged_decode``)."""
    if q.is_cuda and k_cache.dtype in (torch.float16, torch.bfloat16) and page_table.shape[1] <= MAX_KERNEL_PAGES:
        from asr.attention.kernels.decode import paged_decode_triton
        from asr.attention.kernels.scoring import score_pages_triton
        from asr.attention.kernels.selection import select_pages_triton

        scores = score_pages_triton(q, key_stats, page_table, seq_lens, config)
        chosen, chosen_physical = select_pages_triton(scores, seq_lens, page_table, config.page_size,
                                                      config.num_select, config.sink_pages, config.local_pages)
        return paged_decode_triton(q, k_cache, v_cache, page_table, seq_lens, scale, chosen, chosen_physical)
    scores = score_pages(q, key_stats, page_table, seq_lens, config, host_seq_lens)
    chosen = select_pages(scores, seq_lens, config)
    return paged_decode(q, k_cache, v_cache, page_table, seq_lens, scale, chosen, need_lse,
                        host_seq_lens=host_seq_lens)
