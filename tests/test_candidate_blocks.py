"""Composite scoring over candidate blocks (the CPU path for long contexts): the reference wherever the
candidates are every cached block, the heavy blocks found by their page statistics, and the switch in
``estimate_block_mass``."""

import pytest
import torch

from asr.attention.block_selection import (
    candidate_blocks,
    composite_shares_candidates,
    composite_shares_reference,
    estimate_block_mass,
    query_composites,
)
from asr.attention.config import UniSparseConfig
from asr.attention.page_stats import page_key_stats
from tests.paged_batch import make_paged_batch
from tests.tolerances import assert_close

BLOCK = 16


def blocks_of(size, **options):
    return UniSparseConfig(block_size=size, granularities=(size,), **options)


def cache_stats(k_cache, page_table, length):
    """The statistics the paged cache keeps: of each page's filled keys (the last page partial)."""
    page_size = k_cache.shape[2]
    used = page_table[: -(-length // page_size)].long()
    fill = (length - torch.arange(len(used)) * page_size).clamp(1, page_size)
    stats = torch.zeros(k_cache.shape[0], k_cache.shape[1], 4, k_cache.shape[3])
    stats[used] = page_key_stats(k_cache[used], fill)
    return stats


def long_sequence(start, n, heads=(6, 2), head_dim=16, page_size=8, seed=0):
    """Queries at ``start ..`` and a paged cache of ``start + n`` keys (pages in random order, the last
    one partial where the length says so), with the cache's page statistics."""
    batch = make_paged_batch([start + n], *heads, head_dim, page_size, torch.float32, seed=seed)
    q = torch.randn(n, heads[0], head_dim, generator=torch.Generator().manual_seed(seed + 1))
    page_table = batch.page_table[0]
    return q, batch.k_cache, cache_stats(batch.k_cache, page_table, start + n), page_table


def grouped(queries, scale=0.25, kv_heads=2):
    """Composite queries as ``candidate_blocks`` takes them: scaled, per kv head."""
    return (queries * scale).reshape(kv_heads, -1, queries.shape[-1])


def composites(q, start, length):
    queries, _ = query_composites(q, start, BLOCK)
    composite = start // BLOCK + torch.arange(queries.shape[1])
    return queries, torch.clamp((composite + 1) * BLOCK, max=length) - 1


@pytest.mark.parametrize("start, n", [(160, 1), (165, 40), (301, 77)])
def test_every_cached_block_a_candidate_is_the_reference(start, n):
    q, k_cache, stats, page_table = long_sequence(start, n)
    length = start + n
    queries, last_pos = composites(q, start, length)
    old_blocks = start // BLOCK
    shares = composite_shares_candidates(queries, last_pos, k_cache, stats, page_table, start, length, 0.25,
                                         BLOCK, old_blocks - 1, 1)
    expected = composite_shares_reference(queries, last_pos, k_cache, page_table, length, 0.25, BLOCK)
    assert_close(shares, expected)


def test_a_block_holding_one_key_the_queries_match_is_a_candidate():
    start, n = 640, 20
    q, k_cache, _, page_table = long_sequence(start, n, seed=4)
    # the queries of each kv head's group lean one way; one key of an old block (far from the sink
    # and the new tokens) points that way, strongly
    lean = torch.randn(2, 16, generator=torch.Generator().manual_seed(9))
    lean = lean / lean.norm(dim=-1, keepdim=True)
    q += 2 * lean.repeat_interleave(3, dim=0)[None]
    planted = 17
    slot = planted * BLOCK + 9
    k_cache[page_table[slot // 8], :, slot % 8] = 8 * lean
    stats = cache_stats(k_cache, page_table, start + n)
    queries, last_pos = composites(q, start, start + n)
    chosen = candidate_blocks(grouped(queries), stats, page_table, start // BLOCK, BLOCK // 8, 4, 1)
    assert chosen.shape == (2, 5) and (chosen[:, 0] == 0).all()
    assert all(planted in row.tolist() for row in chosen)
    shares = composite_shares_candidates(queries, last_pos, k_cache, stats, page_table, start, start + n,
                                         0.25, BLOCK, 4, 1)
    expected = composite_shares_reference(queries, last_pos, k_cache, page_table, start + n, 0.25, BLOCK)
    assert (expected.argmax(-1) == planted).all()  # the reference agrees the planted block is the heaviest
    assert (shares.argmax(-1) == planted).all()
    assert_close(shares.sum(-1), torch.ones(shares.shape[:2]))


def test_estimate_switches_to_candidates_only_past_the_threshold_on_the_cpu():
    start, n = 640, 20
    q, k_cache, stats, page_table = long_sequence(start, n, seed=5)
    exact = estimate_block_mass(q, k_cache, page_table, start, 0.25, blocks_of(BLOCK))
    few = blocks_of(BLOCK, candidate_blocks=4)
    sparse = estimate_block_mass(q, k_cache, page_table, start, 0.25, few, stats)
    assert ((sparse > 0).sum(-1) <= 1 + 4 + 2).all()  # sink, candidates and the new tokens' two blocks
    assert not torch.equal(sparse, exact)
    many = blocks_of(BLOCK, candidate_blocks=start // BLOCK - 1)  # not past the threshold
    assert torch.equal(estimate_block_mass(q, k_cache, page_table, start, 0.25, many, stats), exact)
    off = blocks_of(BLOCK, candidate_blocks=0)
    assert torch.equal(estimate_block_mass(q, k_cache, page_table, start, 0.25, off, stats), exact)


def test_pages_in_order_read_in_place_choose_as_scattered_pages_do():
    start, n = 640, 20
    q, k_cache, stats, page_table = long_sequence(start, n, seed=6)
    used = page_table[: -(-(start + n) // 8)].long()
    in_order = torch.arange(len(used), dtype=page_table.dtype)
    queries, _ = composites(q, start, start + n)
    scattered = candidate_blocks(grouped(queries), stats, page_table, start // BLOCK, BLOCK // 8, 6, 1)
    ordered = candidate_blocks(grouped(queries), stats[used], in_order, start // BLOCK, BLOCK // 8, 6, 1)
    assert torch.equal(scattered.sort(-1).values, ordered.sort(-1).values)
