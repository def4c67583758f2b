"""CPU fast paths of the attention ops: the same results as the references in ``decode.py``,
``scoring.py`` and ``append.py`` (tests compare them), shaped for a CPU decode step instead of for
clarity. Lengths are read on the host once per step (``DecodeMetadata.host_seq_lens``); each sequence
is handled on its own, its pages read in place when their ids run consecutively, so no padded batch
is gathered. The public functions of those modules dispatch here on the CPU."""

from __future__ import annotations

import torch

from asr.attention.config import UniqueConfig
from asr.attention.page_stats import STAT_MEAN, STAT_STD
from asr.attention.scoring import score_from_stats, upcast

SCORE_PAGES = 256  # pages of keys widened to float32 at once by composite scoring (~3 MB at 3 kv heads, d 64)


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


def _dense_row(
    qg: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pages: torch.Tensor,
    length: int,
    scale: float,
) -> torch.Tensor:
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
        out = out + torch.einsum(
            "hgnp,nhpd->hgd", probs[..., : full * page_size].view(kv_heads, group, full, page_size), values
        )
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
            blocks = (
                pages[chosen.clamp(0, num_pages - 1)] * kv_heads + torch.arange(kv_heads)[:, None]
            ).flatten()
            position = chosen[..., None] * page_size + torch.arange(page_size)
            token_ok = (page_ok[..., None] & (position < length)).flatten(1)  # [kv_heads, n]
            keys = k_cache.flatten(0, 1).index_select(0, blocks).view(kv_heads, -1, head_dim)
            values = v_cache.flatten(0, 1).index_select(0, blocks).view(kv_heads, -1, head_dim)
            values = values.masked_fill(~token_ok[..., None], 0.0)
            out = _softmax_attend(qg, keys, values, scale, token_ok)
        outs.append(out.reshape(q_heads, head_dim))
    return torch.stack(outs).to(q.dtype)


def _mean_std_scores(q: torch.Tensor, stats: torch.Tensor, config: UniqueConfig) -> torch.Tensor:
    """``score_from_stats`` for ``mean`` and UNIQUE's ``gauss`` offset, of one sequence: each group's
    queries summed before the products, ``(sum_g q) . mean + lam / (2 sqrt(d)) (sum_g q^2) . std^2``,
    one matrix-vector product per kv head over the mean and squared std rows widened together (the two
    rows lie side by side), instead of two widened copies and two products per query.

    q: [q_heads, head_dim]; stats: [pages, kv_heads, NUM_STATS, head_dim]. Returns [kv_heads, pages]."""
    pages, kv_heads, _, head_dim = stats.shape
    qg = upcast(q).view(kv_heads, -1, head_dim)
    weights = [qg.sum(1)]
    if config.method == "unique":
        weights.append(qg.square().sum(1) * (config.lam / (2 * head_dim**0.5)))
    rows = len(weights)
    wide = torch.empty(pages, kv_heads, rows, head_dim, dtype=weights[0].dtype)
    wide.copy_(stats[:, :, STAT_MEAN : STAT_STD + 1 if rows == 2 else STAT_MEAN + 1])
    if rows == 2:
        wide[:, :, 1].square_()
    flat = wide.view(pages, kv_heads, rows * head_dim).transpose(0, 1)  # [kv_heads, pages, rows * d]
    return torch.matmul(flat, torch.cat(weights, -1)[:, :, None])[..., 0]


def score_pages_cpu(
    q: torch.Tensor,
    key_stats: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    config: UniqueConfig,
    host_seq_lens: list[int] | None = None,
) -> torch.Tensor:
    """The CPU path of ``score_pages_reference`` (same arguments and result): one sequence at a time
    with lengths read on the host (``host_seq_lens`` if given, planned once per step, else from
    ``seq_lens``), scoring only its own pages, read in place when their ids run consecutively (as a
    lone sequence's do) instead of gathered for every table slot; ``mean`` and UNIQUE's ``gauss``
    offset as one product per kv head (``_mean_std_scores``)."""
    batch = q.shape[0]
    scores = torch.full((batch, key_stats.shape[1], page_table.shape[1]), float("-inf"), device=q.device)
    fused = config.method == "mean" or (config.method == "unique" and config.offset == "gauss")
    for row, length in enumerate(seq_lens.tolist() if host_seq_lens is None else host_seq_lens):
        pages = page_table[row, : -(-length // config.page_size)].long()
        stats = _pages_view(key_stats, pages)
        if fused:
            scores[row, :, : len(pages)] = _mean_std_scores(q[row], stats, config)
            continue
        row_scores = score_from_stats(q[row][None, :, None], stats.transpose(0, 1)[None], config.method,
                                      config.offset, config.lam)  # [1, kv_heads, 1, pages]
        scores[row, :, : len(pages)] = row_scores[0, :, 0]
    return scores


def composite_shares_cpu(
    queries: torch.Tensor,
    last_pos: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    length: int,
    scale: float,
    block_size: int,
) -> torch.Tensor:
    """The CPU path of ``composite_shares_reference`` (same arguments and result): the keys are read in
    place, ``SCORE_PAGES`` pages at a time (a view when their ids run consecutively), and widened to
    float32 per run of pages while it sits in the cache, instead of gathered and widened whole (a
    float32 copy of every key, per layer and prefill). Only the keys past the earliest composite's
    last position are masked."""
    q_heads, num_composites, head_dim = queries.shape
    _, kv_heads, page_size, _ = k_cache.shape
    num_pages = -(-length // page_size)
    pages = page_table[:num_pages].long()
    rows = queries.reshape(kv_heads, q_heads // kv_heads * num_composites, head_dim) * scale
    logits = torch.empty(kv_heads, rows.shape[1], num_pages * page_size)
    for begin in range(0, num_pages, SCORE_PAGES):
        keys = _pages_view(k_cache, pages[begin : begin + SCORE_PAGES])  # [n, kv_heads, P, d]
        wide = torch.empty(kv_heads, keys.shape[0], page_size, head_dim)
        wide.copy_(keys.transpose(0, 1))
        logits[:, :, begin * page_size : (begin + keys.shape[0]) * page_size] = torch.matmul(
            rows, wide.flatten(1, 2).transpose(1, 2)
        )
    first_masked = int(last_pos.min()) + 1  # keys every composite sees come before it
    key_pos = torch.arange(first_masked, num_pages * page_size)
    hidden = (key_pos[None, :] > last_pos[:, None]).repeat(q_heads // kv_heads, 1)  # [rows, keys]
    logits[:, :, first_masked:].masked_fill_(hidden, float("-inf"))
    num_key_blocks = -(-length // block_size)
    probs = logits.softmax(-1)[..., :length]
    probs = torch.nn.functional.pad(probs, (0, num_key_blocks * block_size - length))
    shares = probs.view(kv_heads, rows.shape[1], num_key_blocks, block_size).sum(-1)
    return shares.view(q_heads, num_composites, num_key_blocks)


def append_one_token(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    key_stats: torch.Tensor,
    new_k: torch.Tensor,
    new_v: torch.Tensor,
    slot: int,
) -> None:
    """``append_kv_reference`` for one token at a host-side ``slot`` (a CPU decode step): the page's
    statistics come from its filled prefix directly, without masks (about 3x fewer ops)."""
    page, offset = divmod(slot, k_cache.shape[2])
    k_cache[page, :, offset] = new_k[0].to(k_cache.dtype)
    v_cache[page, :, offset] = new_v[0].to(v_cache.dtype)
    keys = k_cache[page, :, : offset + 1].float()  # [kv_heads, fill, head_dim]
    std, mean = torch.std_mean(keys, dim=1, correction=0)
    key_stats[page] = torch.stack([mean, std, keys.amin(dim=1), keys.amax(dim=1)], dim=1).to(key_stats.dtype)


def block_sparse_prefill_cpu(
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
    """The CPU path of ``block_sparse_prefill_reference`` (same arguments and result), one query block
    at a time and only its query rows inside ``[start, start + n)`` (a short prefill, such as a draft
    check or a token tree, fills a fraction of its block): the key blocks its kv heads chose (as many
    slots as the head that chose most) gathered by one ``index_select`` over [pages * kv_heads, P, d]
    and attended by all query heads of each group together (matmuls in the cache dtype, the scale
    folded into the queries; softmax in float32). The diagonal block is moved to the last slot, so the
    causal mask is one triangle there; with a ``tree``, the tree's rows mask the slots from the first
    that may hold new keys on (the earlier slots hold cached keys only, which every node sees); the few
    unused slots of heads that chose fewer are masked one by one."""
    n, q_heads, head_dim = q.shape
    _, kv_heads, page_size, _ = k_cache.shape
    group, size = q_heads // kv_heads, block_size
    length = start + n
    num_query_blocks = blocks.shape[1]
    first = start // size
    lead = start - first * size
    tail = num_query_blocks * size - lead - n
    queries = torch.nn.functional.pad((q.float() * scale).to(k_cache.dtype), (0, 0, 0, 0, lead, tail))
    queries = queries.view(num_query_blocks, size, kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
    counts = (blocks >= 0).sum(-1)  # [kv_heads, query blocks]
    widths = counts.amax(0).tolist()
    per_block = size // page_size
    last_page = -(-length // page_size) - 1
    heads = torch.arange(kv_heads)[:, None]
    key_offset = torch.arange(size)[None, :]
    flat_k, flat_v = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    out = torch.empty_like(queries)  # [query blocks, kv_heads, group, size, d]; rows outside the span unused
    for block, width in enumerate(widths):
        own = first + block
        rows_from = lead if block == 0 else 0
        rows_to = size - tail if block == num_query_blocks - 1 else size
        rows = rows_to - rows_from  # this block's queries
        chosen = blocks[:, block, :width].long()
        chosen = chosen.masked_fill(torch.arange(width) == counts[:, block, None] - 1, -1)
        chosen[:, -1] = own  # [kv_heads, width]: the diagonal last
        # the pages of the chosen blocks (the last block may reach past the sequence's last page)
        logical = (chosen.clamp(min=0)[..., None] * per_block + torch.arange(per_block)).clamp(max=last_page)
        key_rows = (page_table.long()[logical.flatten(1)] * kv_heads + heads).flatten()
        keys = flat_k.index_select(0, key_rows).view(kv_heads, width * size, head_dim)
        values = flat_v.index_select(0, key_rows).view(kv_heads, width * size, head_dim)
        inside = length - own * size  # diagonal slots inside the sequence
        if inside < size:  # the slack past its end may hold anything
            keys[:, width * size - size + inside :] = 0
            values[:, width * size - size + inside :] = 0
        block_queries = queries[block, :, :, rows_from:rows_to].reshape(kv_heads, group * rows, head_dim)
        logits = torch.matmul(block_queries, keys.transpose(1, 2)).float()  # [kv_heads, group * rows, keys]
        for head, slot in (chosen < 0).nonzero().tolist():
            logits[head, :, slot * size : (slot + 1) * size] = float("-inf")
        query_offset = torch.arange(rows_from, rows_to).repeat(group)[:, None]  # [rows, 1]: place in block
        if tree is None:
            causal = (key_offset <= query_offset) & (key_offset < inside)
            logits[..., -size:].masked_fill_(~causal, float("-inf"))
        else:
            nodes = block * size + query_offset[:, 0] - lead  # each row's node
            new_from = int((chosen >= first).int().argmax(1).min())  # slots before hold cached keys only
            logits[..., new_from * size :].masked_fill_(
                ~_tree_visible(chosen[:, new_from:], nodes, tree, start, length, size), float("-inf"))
        attended = torch.matmul(torch.softmax(logits, dim=-1).to(values.dtype), values)
        out[block, :, :, rows_from:rows_to] = attended.view(kv_heads, group, rows, head_dim)
    out = out.permute(0, 3, 1, 2, 4).reshape(num_query_blocks * size, q_heads, head_dim)
    return out[lead : lead + n].to(q.dtype)


def _tree_visible(chosen: torch.Tensor, nodes: torch.Tensor, tree: torch.Tensor, start: int, length: int,
                  size: int) -> torch.Tensor:
    """[kv_heads, rows, width * size] bool: which keys of the ``chosen`` blocks ([kv_heads, width]) the
    query rows of tree nodes ``nodes`` [rows] see: every cached key (positions before ``start``) and the
    new keys (up to ``length``) their rows of ``tree`` [n, n] mark."""
    positions = (chosen.clamp(min=0)[..., None] * size + torch.arange(size)).flatten(1)  # [kv_heads, keys]
    new = (positions - start).clamp(0, tree.shape[0] - 1)
    marked = tree[nodes[None, :, None], new[:, None, :]]
    return (positions < start)[:, None, :] | (marked & (positions < length)[:, None, :])
