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

The query heads of a GQA group share their choice (the mean of their estimates): keys are read once
per kv head. A query block then keeps its sink and local blocks (the diagonal included) and, highest
estimate first, the fewest further blocks that bring the kept share to ``mass``, at most
``max_blocks`` of them.
"""

from __future__ import annotations

import torch

from asr.attention import cpu
from asr.attention.config import UniSparseConfig
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
) -> torch.Tensor:
    """Each key block's estimated share of each query block's attention, per kv head (the mean over
    the query heads of its group).

    q: [n, q_heads, head_dim] new queries at positions ``start ..`` (their keys are in the cache);
    k_cache: [num_pages, kv_heads, P, head_dim] (one layer); page_table: [>= pages] int.
    Returns [kv_heads, query blocks, key blocks] float32; each row sums to 1 over the key blocks its
    queries may see (``prefill_blocks`` numbers the query blocks; key blocks count from 0).
    """
    length = start + q.shape[0]
    size = config.block_size
    first, num_query_blocks = prefill_blocks(start, length, size)
    total = torch.zeros(q.shape[1], num_query_blocks, -(-length // size), device=q.device)
    for granularity in config.granularities:
        queries, weights = query_composites(q, start, granularity)
        composite = start // granularity + torch.arange(queries.shape[1], device=q.device)
        last_pos = torch.clamp((composite + 1) * granularity, max=length) - 1
        shares = composite_shares(queries, last_pos, k_cache, page_table, length, scale, size)
        query_block = composite * granularity // size - first
        block_weight = torch.zeros(num_query_blocks, device=q.device).index_add_(0, query_block, weights)
        mass = torch.zeros_like(total).index_add_(1, query_block, shares * weights[None, :, None])
        total += mass / block_weight[None, :, None]
    kv_heads = k_cache.shape[1]
    return total.view(kv_heads, -1, *total.shape[1:]).mean(1) / len(config.granularities)


def select_blocks(
    mass: torch.Tensor, start: int, length: int, config: UniSparseConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key blocks each query block attends, per kv head.

    mass: [kv_heads, query blocks, key blocks] estimated shares (``estimate_block_mass``) of the
    queries at positions ``[start, length)``. Returns blocks: [kv_heads, query blocks, width] int32 key
    block indices in ascending order (the diagonal last), padded with -1, width =
    ``min(key blocks, config.max_chosen)``; and counts: [kv_heads, query blocks] int32.
    """
    first, num_query_blocks = prefill_blocks(start, length, config.block_size)
    num_key_blocks = mass.shape[-1]
    device = mass.device
    own = first + torch.arange(num_query_blocks, device=device)[:, None]  # [query blocks, 1]
    key = torch.arange(num_key_blocks, device=device)[None, :]
    visible = key <= own
    forced = visible & ((key < config.sink_blocks) | (key > own - config.local_blocks))
    candidates = mass.masked_fill(~visible | forced, float("-inf"))
    ranked, order = candidates.sort(dim=-1, descending=True)
    finite = ranked > float("-inf")
    share = ranked.masked_fill(~finite, 0.0)
    before = (mass * forced).sum(-1, keepdim=True) + share.cumsum(-1) - share  # kept share ahead of each
    rank = torch.arange(num_key_blocks, device=device)
    keep_ranked = finite & (rank < config.max_blocks) & ((before < config.mass) | (config.mass >= 1))
    keep = torch.zeros_like(keep_ranked).scatter_(-1, order, keep_ranked) | forced
    width = min(num_key_blocks, config.max_chosen)
    ascending = torch.where(keep, key, num_key_blocks).sort(dim=-1).values[..., :width]
    blocks = ascending.masked_fill(ascending == num_key_blocks, -1).to(torch.int32)
    return blocks, keep.sum(-1).to(torch.int32)
