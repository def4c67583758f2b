"""UniSparse block selection for prefill: which key blocks each query block attends.

Blocks sit at absolute positions: block j holds positions ``[j * S, (j + 1) * S)`` (S =
``UniSparseConfig.block_size``). A prefill of ``n`` queries after ``start`` cached tokens fills the
query blocks ``start // S .. (start + n - 1) // S``; query block i may attend key blocks ``0 .. i``.

Composite tokens: at each granularity c the new queries are average-pooled in runs of c positions.
Each composite query's softmax over the cached keys (post-rope, re-rotated by the distance cap or
not: as they are), summed per key block and averaged over a query block's composites (weighted by
their queries), estimates each key block's share of the query block's attention; the granularities'
estimates are averaged. Keys are not pooled: on SmolLM2-135M reading 8k tokens of text, keys pooled
per page (16) or even per 4 tokens lost the single keys that some heads of the early layers attend
(recall 0.74 at a 0.95 target, layers 3-9), while queries pooled per 64 kept it (0.94).

On the CPU a long context is not scored key by key (that read every cached key per layer and prefill,
so a chunk's cost grew with the recording): the composites first rank the cached blocks by the
largest logit any of them could reach there (Quest's bound from each page's per-channel key minimum
and maximum, which the paged cache keeps, so a single heavy key is not averaged away as in pooled
keys), and only the ``candidate_blocks`` best of them, the sink blocks and the new tokens' own blocks
are scored key by key; the other blocks get no share (``composite_shares_candidates``).

The query heads of a GQA group share their choice (the mean of their estimates): keys are read once
per kv head. A query block then keeps its sink and local blocks (the diagonal included) and, highest
estimate first, the fewest further blocks that bring the kept share to ``mass``, at most
``max_blocks`` of them.
"""

from __future__ import annotations

import torch

from asr.attention import cpu
from asr.attention.config import UniSparseConfig
from asr.attention.page_stats import STAT_MAX, STAT_MIN
from asr.attention.paged_cache import gather_sequence

SCORE_CHUNK_ELEMENTS = 1 << 25  # composite logits estimated at once (128 MiB of float32)


def prefill_blocks(start: int, length: int, block_size: int) -> tuple[int, int]:
    """(first query block, number of query blocks) of the queries at positions ``[start, length)``."""
    first = start // block_size
    return first, (length - 1) // block_size - first + 1


def query_composites(q: torch.Tensor, start: int, granularity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The new queries average-pooled over runs of ``granularity`` absolute positions.

    q: [n, q_heads, head_dim] at positions ``start ..``. Returns mean: [q_heads, composites, head_dim]
    float32 and count: [composites] float32 (queries per composite); composite a holds positions
    ``[(start // granularity + a) * granularity, ...)``.
    """
    n, q_heads, head_dim = q.shape
    lead = start % granularity
    composites = -(-(lead + n) // granularity)
    padded = torch.nn.functional.pad(q, (0, 0, 0, 0, lead, composites * granularity - lead - n))
    present = torch.zeros(composites * granularity, device=q.device)
    present[lead : lead + n] = 1
    count = present.view(composites, granularity).sum(1)
    total = padded.view(composites, granularity, q_heads, head_dim).sum(1, dtype=torch.float32)
    mean = total / count[:, None, None]
    return mean.transpose(0, 1), count


def composite_shares_reference(
    queries: torch.Tensor,
    last_pos: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    length: int,
    scale: float,
    block_size: int,
) -> torch.Tensor:
    """Each key block's share of each composite query's attention.

    queries: [q_heads, composites, head_dim] float32 (``query_composites``); last_pos: [composites]
    int, the last position a composite holds (it sees the keys up to there); k_cache: [num_pages,
    kv_heads, P, head_dim] (one layer); page_table: [>= pages] int; length: tokens in the sequence.
    Returns [q_heads, composites, key blocks] float32: the softmax of ``scale q.k`` over the visible
    keys, summed per key block (rows sum to 1).
    """
    q_heads, num_composites, head_dim = queries.shape
    keys = gather_sequence(k_cache, page_table, length).float().transpose(0, 1)  # [kv_heads, length, d]
    kv_heads = keys.shape[0]
    num_key_blocks = -(-length // block_size)
    key_pos = torch.arange(length, device=queries.device)
    shares = torch.empty(q_heads, num_composites, num_key_blocks, device=queries.device)
    rows = max(1, SCORE_CHUNK_ELEMENTS // (q_heads * length))
    for begin in range(0, num_composites, rows):
        part = slice(begin, begin + rows)
        logits = torch.einsum("hgad,htd->hgat", queries[:, part].reshape(kv_heads, q_heads // kv_heads, -1,
                                                                         head_dim), keys) * scale
        logits.masked_fill_(key_pos[None, :] > last_pos[part, None], float("-inf"))
        probs = torch.nn.functional.pad(logits.softmax(-1), (0, num_key_blocks * block_size - length))
        shares[:, part] = probs.view(q_heads, -1, num_key_blocks, block_size).sum(-1)
    return shares


def candidate_blocks(
    rows: torch.Tensor, key_stats: torch.Tensor, page_table: torch.Tensor, old_blocks: int,
    pages_per_block: int, count: int, sink_blocks: int,
) -> torch.Tensor:
    """The cached key blocks worth scoring key by key, per kv head: the first ``sink_blocks`` and the
    ``count`` others among the first ``old_blocks`` where some row's logit could be largest (the upper
    bound of ``row.k`` over a page from its keys' per-channel minimum and maximum, maximised over the
    block's pages and the kv head's rows).

    rows: [kv_heads, rows, head_dim] float32, the scaled composite queries of each kv head's group;
    key_stats: [num_pages, kv_heads, NUM_STATS, head_dim] (one layer); page_table: [>= old_blocks *
    pages_per_block] int. Returns [kv_heads, sink_blocks + count] int64 block indices."""
    kv_heads = key_stats.shape[1]
    pages = page_table[: old_blocks * pages_per_block].long()
    ranges = key_stats[:, :, STAT_MIN : STAT_MAX + 1]  # [num_pages, kv, 2, d]: each channel's min, max
    first = int(pages[0])
    if torch.equal(pages, torch.arange(first, first + len(pages), device=pages.device)):
        ranges = ranges[first : first + len(pages)]  # pages in order (one recording's): read in place
    else:
        ranges = ranges[pages]
    # max over a channel's range of q_i k_i: q_i min_i where q_i < 0, q_i max_i where q_i > 0
    signed = torch.cat([rows.clamp(max=0), rows.clamp(min=0)], dim=-1)
    bound = torch.einsum("krd,pkd->krp", signed, ranges.flatten(2).float())  # [kv, rows, pages]
    block_bound = bound.amax(1).view(kv_heads, old_blocks, pages_per_block).amax(-1)  # [kv, blocks]
    best = block_bound[:, sink_blocks:].topk(count, dim=-1).indices + sink_blocks
    sinks = torch.arange(sink_blocks, device=rows.device).expand(kv_heads, sink_blocks)
    return torch.cat([sinks, best], dim=1)


def composite_shares_candidates(
    queries: torch.Tensor,
    last_pos: torch.Tensor,
    k_cache: torch.Tensor,
    key_stats: torch.Tensor,
    page_table: torch.Tensor,
    start: int,
    length: int,
    scale: float,
    block_size: int,
    count: int,
    sink_blocks: int,
) -> torch.Tensor:
    """``composite_shares_reference`` over the key blocks a composite could attend most, not all: the
    ``candidate_blocks`` of the blocks cached before ``start`` (the new queries' first position) and
    every block from the one holding ``start`` on, scored key by key; every other block gets no share.
    The same as the reference where the candidates are all the cached blocks.

    Arguments as ``composite_shares_reference``, and key_stats: [num_pages, kv_heads, NUM_STATS,
    head_dim] (one layer); count: candidates besides the ``sink_blocks`` first. Returns [q_heads,
    composites, key blocks] float32 (rows sum to 1 over their candidates)."""
    q_heads, num_composites, head_dim = queries.shape
    _, kv_heads, page_size, _ = k_cache.shape
    pages_per_block = block_size // page_size
    old_blocks = start // block_size
    num_key_blocks = -(-length // block_size)
    recent = torch.arange(old_blocks, num_key_blocks, device=queries.device)
    rows = (queries * scale).reshape(kv_heads, -1, head_dim)  # each kv head's query heads and composites
    chosen = candidate_blocks(rows, key_stats, page_table, old_blocks, pages_per_block, count, sink_blocks)
    blocks = torch.cat([chosen, recent.expand(kv_heads, -1)], dim=1)  # [kv, width]
    width = blocks.shape[1]
    positions = (blocks[:, :, None] * block_size + torch.arange(block_size, device=queries.device)).flatten(1)
    table = page_table[: num_key_blocks * pages_per_block].long()  # the last block's unused pages read page 0
    table = torch.nn.functional.pad(table, (0, num_key_blocks * pages_per_block - len(table)))
    # whole pages, in the order of ``positions``; masked where past length
    pages = table[(blocks[:, :, None] * pages_per_block
                   + torch.arange(pages_per_block, device=queries.device)).flatten(1)]  # [kv, width * ppb]
    group = q_heads // kv_heads
    hidden = positions[:, None, :] > last_pos.repeat(group)[None, :, None]  # [kv, rows, keys]
    shares = torch.zeros(q_heads, num_composites, num_key_blocks, device=queries.device)
    for head in range(kv_heads):
        # index_select of whole pages: several times faster than advanced indexing on the CPU
        keys = k_cache[:, head].index_select(0, pages[head]).reshape(-1, head_dim).float()  # [keys, d]
        logits = torch.matmul(rows[head], keys.T).masked_fill_(hidden[head], float("-inf"))
        probs = logits.softmax(-1).view(-1, width, block_size).sum(-1)  # [group * composites, width]
        part = shares[head * group : (head + 1) * group].view(-1, num_key_blocks)
        part.scatter_(1, blocks[head].expand(probs.shape[0], -1), probs)
    return shares


def composite_shares(
    queries: torch.Tensor,
    last_pos: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    length: int,
    scale: float,
    block_size: int,
) -> torch.Tensor:
    """Public composite scoring (arguments as ``composite_shares_reference``): the Triton kernel on
    CUDA for fp16/bf16 caches (one pass over the keys per run of composites, no logits in memory),
    the CPU path on the CPU (keys read in place), the reference elsewhere."""
    if queries.is_cuda and k_cache.dtype in (torch.float16, torch.bfloat16):
        from asr.attention.kernels.block_mass import composite_shares_triton

        return composite_shares_triton(queries, last_pos, k_cache, page_table, length, scale, block_size)
    if queries.device.type == "cpu":
        return cpu.composite_shares_cpu(queries, last_pos, k_cache, page_table, length, scale, block_size)
    return composite_shares_reference(queries, last_pos, k_cache, page_table, length, scale, block_size)


def estimate_block_mass(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    start: int,
    scale: float,
    config: UniSparseConfig,
    key_stats: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each key block's estimated share of each query block's attention, per kv head (the mean over
    the query heads of its group).

    q: [n, q_heads, head_dim] new queries at positions ``start ..`` (their keys are in the cache);
    k_cache: [num_pages, kv_heads, P, head_dim] (one layer); page_table: [>= pages] int; key_stats:
    [num_pages, kv_heads, NUM_STATS, head_dim], the cache's page statistics (one layer): given on the
    CPU, a context of more than ``config.sink_blocks + config.candidate_blocks`` cached blocks is scored
    over candidates (``composite_shares_candidates``). Returns [kv_heads, query blocks, key blocks]
    float32; each row sums to 1 over the key blocks its queries may see (``prefill_blocks`` numbers the
    query blocks; key blocks count from 0).
    """
    length = start + q.shape[0]
    size = config.block_size
    first, num_query_blocks = prefill_blocks(start, length, size)
    total = torch.zeros(q.shape[1], num_query_blocks, -(-length // size), device=q.device)
    by_candidates = (key_stats is not None and q.device.type == "cpu" and config.candidate_blocks > 0
                     and start // size > config.sink_blocks + config.candidate_blocks)
    for granularity in config.granularities:
        queries, weights = query_composites(q, start, granularity)
        composite = start // granularity + torch.arange(queries.shape[1], device=q.device)
        last_pos = torch.clamp((composite + 1) * granularity, max=length) - 1
        if by_candidates:
            shares = composite_shares_candidates(queries, last_pos, k_cache, key_stats, page_table, start,
                                                 length, scale, size, config.candidate_blocks,
                                                 config.sink_blocks)
        else:
            shares = composite_shares(queries, last_pos, k_cache, page_table, length, scale, size)
        query_block = composite * granularity // size - first
        block_weight = torch.zeros(num_query_blocks, device=q.device).index_add_(0, query_block, weights)
        mass = torch.zeros_like(total).index_add_(1, query_block, shares * weights[None, :, None])
        total += mass / block_weight[None, :, None]
    kv_heads = k_cache.shape[1]
    return total.view(kv_heads, -1, *total.shape[1:]).mean(1) / len(config.granularities)


def select_blocks(
    mass: torch.Tensor, start: int, length: int, config: UniSparseConfig, tree: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key blocks each query block attends, per kv head.

    mass: [kv_heads, query blocks, key blocks] estimated shares (``estimate_block_mass``) of the
    queries at positions ``[start, length)``; tree: the queries are a token tree's nodes
    (``asr.llm.token_tree``), so each query block also keeps every block of new keys up to its own
    (a node's ancestors may sit in any of them), on top of the blocks it chooses as causal queries
    would (those blocks' estimated shares, which count every earlier node, are not counted towards
    ``config.mass``); the last ``config.dense_last_blocks`` query blocks keep every block. Returns
    blocks: [kv_heads, query blocks, width] int32 key block indices in ascending order (the diagonal
    last), padded with -1, width = ``min(key blocks, config.max_chosen)`` plus, for a tree, its query
    blocks past the local ones (every key block with dense last blocks); and counts: [kv_heads, query
    blocks] int32.
    """
    first, num_query_blocks = prefill_blocks(start, length, config.block_size)
    num_key_blocks = mass.shape[-1]
    device = mass.device
    own = first + torch.arange(num_query_blocks, device=device)[:, None]  # [query blocks, 1]
    key = torch.arange(num_key_blocks, device=device)[None, :]
    visible = key <= own
    dense_row = own > first + num_query_blocks - 1 - config.dense_last_blocks  # [query blocks, 1]
    forced = visible & ((key < config.sink_blocks) | (key > own - config.local_blocks) | dense_row)
    # a node's ancestors may sit in any block of new keys up to its own
    tree_forced = visible & (key >= first) & ~forced if tree else torch.zeros_like(forced)
    candidates = mass.masked_fill(~visible | forced | tree_forced, float("-inf"))
    ranked, order = candidates.sort(dim=-1, descending=True)
    finite = ranked > float("-inf")
    share = ranked.masked_fill(~finite, 0.0)
    before = (mass * forced).sum(-1, keepdim=True) + share.cumsum(-1) - share  # kept share ahead of each
    rank = torch.arange(num_key_blocks, device=device)
    keep_ranked = finite & (rank < config.max_blocks) & ((before < config.mass) | (config.mass >= 1))
    keep = torch.zeros_like(keep_ranked).scatter_(-1, order, keep_ranked) | forced | tree_forced
    tree_blocks = max(0, num_query_blocks - config.local_blocks) if tree else 0
    width = min(num_key_blocks, config.max_chosen + tree_blocks)
    if config.dense_last_blocks:
        width = num_key_blocks
    ascending = torch.where(keep, key, num_key_blocks).sort(dim=-1).values[..., :width]
    blocks = ascending.masked_fill(ascending == num_key_blocks, -1).to(torch.int32)
    return blocks, keep.sum(-1).to(torch.int32)
