"""UniSparse prefill: block-mass estimates, block selection, the CPU path against the reference, and
choosing every block against dense causal attention."""

import math

import pytest
import torch

from asr.attention.block_selection import (
    composite_shares_reference,
    estimate_block_mass,
    prefill_blocks,
    query_composites,
    select_blocks,
)
from asr.attention.config import UniSparseConfig
from asr.attention.cpu import SCORE_PAGES, block_sparse_prefill_cpu, composite_shares_cpu
from asr.attention.paged_cache import gather_sequence
from asr.attention.prefill import block_sparse_prefill_reference, unisparse_prefill
from asr.llm.attention import prefill_attention
from asr.llm.token_tree import token_tree
from tests.block_choice import random_blocks
from tests.paged_batch import make_paged_batch
from tests.tolerances import assert_close

SPANS = [pytest.param(0, 70, id="fresh"), pytest.param(100, 1, id="one-token"),
         pytest.param(37, 90, id="mid-block"), pytest.param(500, 200, id="long")]


def sequence(start, n, heads, head_dim=16, page_size=8, dtype=torch.float32, seed=0, key_scale=1.0):
    batch = make_paged_batch([start + n], *heads, head_dim, page_size, dtype, seed=seed, key_scale=key_scale)
    q = torch.randn(n, heads[0], head_dim, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    return q, batch.k_cache, batch.v_cache, batch.page_table[0]


def true_block_mass(q, k_cache, page_table, start, scale, block_size):
    """[kv_heads, query blocks, key blocks]: the exact attention share of each key block, averaged over
    each query block's queries and the query heads of each kv head."""
    n, q_heads, _ = q.shape
    length = start + n
    keys = gather_sequence(k_cache, page_table, length).float()
    keys = keys.repeat_interleave(q_heads // keys.shape[1], dim=1)
    logits = torch.einsum("nhd,thd->hnt", q.float(), keys) * scale
    causal = torch.arange(length)[None, :] <= torch.arange(start, length)[:, None]
    probs = logits.masked_fill(~causal, float("-inf")).softmax(-1)
    num_key_blocks = -(-length // block_size)
    per_block = torch.nn.functional.pad(probs, (0, num_key_blocks * block_size - length))
    per_block = per_block.view(q_heads, n, num_key_blocks, block_size).sum(-1)
    first, num_query_blocks = prefill_blocks(start, length, block_size)
    query_block = torch.arange(start, length) // block_size - first
    total = torch.zeros(q_heads, num_query_blocks, num_key_blocks).index_add_(1, query_block, per_block)
    total = total / torch.bincount(query_block).float()[None, :, None]
    return total.view(k_cache.shape[1], -1, num_query_blocks, num_key_blocks).mean(1)


@pytest.mark.parametrize("start, n", SPANS)
def test_estimate_from_single_queries_is_the_true_block_mass(start, n):
    q, k_cache, _, page_table = sequence(start, n, (6, 2), seed=3, key_scale=2.0)
    config = UniSparseConfig(block_size=16, granularities=(1,))
    estimate = estimate_block_mass(q, k_cache, page_table, start, 0.25, config)
    assert_close(estimate, true_block_mass(q, k_cache, page_table, start, 0.25, 16))


@pytest.mark.parametrize("start, n", SPANS)
def test_pooled_estimate_is_a_causal_distribution(start, n):
    q, k_cache, _, page_table = sequence(start, n, (6, 2), seed=4)
    config = UniSparseConfig(block_size=32, granularities=(8, 32))
    mass = estimate_block_mass(q, k_cache, page_table, start, 0.25, config)
    first, num_query_blocks = prefill_blocks(start, start + n, 32)
    future = torch.arange(mass.shape[-1])[None, :] > first + torch.arange(num_query_blocks)[:, None]
    assert (mass >= 0).all() and (mass[:, future] == 0).all()
    assert_close(mass.sum(-1), torch.ones(mass.shape[:2]))


def chosen_sets(blocks):
    return [[set(row[row >= 0].tolist()) for row in head] for head in blocks]


@pytest.mark.parametrize("mass_target, max_blocks", [(0.5, 3), (0.9, 100), (0.99, 2)])
def test_selection_keeps_forced_blocks_and_the_fewest_others_reaching_the_mass(mass_target, max_blocks):
    start, length, size = 300, 520, 32
    config = UniSparseConfig(block_size=size, granularities=(size,), mass=mass_target, max_blocks=max_blocks,
                             sink_blocks=1, local_blocks=2)
    first, num_query_blocks = prefill_blocks(start, length, size)
    num_key_blocks = -(-length // size)
    gen = torch.Generator().manual_seed(5)
    own = first + torch.arange(num_query_blocks)[:, None]
    visible = torch.arange(num_key_blocks)[None, :] <= own
    mass = torch.rand(4, num_query_blocks, num_key_blocks, generator=gen).pow(4) * visible
    mass = mass / mass.sum(-1, keepdim=True)
    blocks, counts = select_blocks(mass, start, length, config)
    assert blocks.shape[-1] == min(num_key_blocks, config.max_chosen)
    for head, rows in enumerate(chosen_sets(blocks)):
        for i, chosen in enumerate(rows):
            row, diagonal = blocks[head, i], first + i
            assert len(chosen) == counts[head, i] and row[: len(chosen)].tolist() == sorted(chosen)
            assert row[len(chosen) - 1] == diagonal and max(chosen) == diagonal  # causal, diagonal last
            forced = {0, diagonal - 1, diagonal}
            assert forced <= chosen
            others = sorted(chosen - forced, key=lambda j: mass[head, i, j].item())
            share = mass[head, i, sorted(chosen)].sum().item()
            assert len(others) <= max_blocks
            candidates = set(range(diagonal + 1)) - forced
            if share < mass_target - 1e-6:  # short of the target only when the budget ran out
                assert len(others) == min(max_blocks, len(candidates))
            if others:  # minimal: without its weakest extra block the share falls short
                assert share - mass[head, i, others[0]].item() < mass_target
                weakest_kept = mass[head, i, others[0]].item()  # and nothing left out beats it
                assert all(mass[head, i, j].item() <= weakest_kept for j in candidates - chosen)


def test_full_mass_and_budget_choose_every_visible_block():
    start, length = 37, 300
    config = UniSparseConfig(block_size=16, granularities=(16,), mass=1.0, max_blocks=1000)
    mass = torch.rand(3, *prefill_blocks(start, length, 16)[1:], -(-length // 16))
    blocks, _ = select_blocks(mass, start, length, config)
    first = start // 16
    for rows in chosen_sets(blocks):
        assert rows == [set(range(first + i + 1)) for i in range(len(rows))]


CPU_SHAPES = [pytest.param(torch.float32, (6, 2), 8, 32, id="fp32-gqa3-P8-B32"),
              pytest.param(torch.bfloat16, (6, 2), 8, 32, id="bf16-gqa3-P8-B32"),
              pytest.param(torch.float32, (4, 4), 16, 64, id="fp32-mha-P16-B64"),
              pytest.param(torch.bfloat16, (8, 1), 16, 16, id="bf16-gqa8-P16-B16")]


@pytest.mark.parametrize("start, n", SPANS)
@pytest.mark.parametrize("dtype, heads, page_size, block_size", CPU_SHAPES)
def test_cpu_path_matches_reference(dtype, heads, page_size, block_size, start, n):
    q, k_cache, v_cache, page_table = sequence(start, n, heads, 32, page_size, dtype, seed=start + n)
    scale = 1 / math.sqrt(32)
    for keep in (0.3, 1.0):
        blocks = random_blocks(heads[1], start, start + n, block_size, keep=keep, seed=start)
        out = block_sparse_prefill_cpu(q, k_cache, v_cache, page_table, start, scale, blocks, block_size)
        expected = block_sparse_prefill_reference(q.float(), k_cache.float(), v_cache.float(), page_table,
                                                  start, scale, blocks, block_size)
        assert_close(out.float(), expected, dtype)


def random_tree(n: int, seed: int) -> torch.Tensor:
    """[n, n] bool ancestors of a token tree of n nodes: readings of 1-9 tokens from a 3-token alphabet
    (shared prefixes branch), cut to the first n nodes (a node's ancestors come before it)."""
    gen = torch.Generator().manual_seed(seed)
    readings = [torch.randint(3, (int(torch.randint(1, 10, (1,), generator=gen)),), generator=gen).tolist()
                for _ in range(n)]
    ancestors = token_tree(readings).ancestors
    assert len(ancestors) >= n
    return ancestors[:n, :n]


TREE_SPANS = [pytest.param(0, 30, id="fresh"), pytest.param(37, 1, id="one-node"),
              pytest.param(37, 40, id="mid-block"), pytest.param(500, 90, id="long")]


@pytest.mark.parametrize("start, n", TREE_SPANS)
@pytest.mark.parametrize("dtype, heads, page_size, block_size", CPU_SHAPES)
def test_cpu_path_of_a_tree_matches_reference(dtype, heads, page_size, block_size, start, n):
    q, k_cache, v_cache, page_table = sequence(start, n, heads, 32, page_size, dtype, seed=start + n)
    tree = random_tree(n, seed=n)
    for keep in (0.3, 1.0):
        blocks = random_blocks(heads[1], start, start + n, block_size, keep=keep, seed=start)
        out = block_sparse_prefill_cpu(q, k_cache, v_cache, page_table, start, 0.2, blocks, block_size, tree)
        expected = block_sparse_prefill_reference(q.float(), k_cache.float(), v_cache.float(), page_table,
                                                  start, 0.2, blocks, block_size, tree)
        assert_close(out.float(), expected, dtype)
        if n > 1:  # the tree mask took effect: causal attention differs
            causal = block_sparse_prefill_cpu(q, k_cache, v_cache, page_table, start, 0.2, blocks, block_size)
            assert (out.float() - causal.float()).abs().max() > 1e-3


@pytest.mark.parametrize("start, n", TREE_SPANS)
def test_unisparse_prefill_of_a_tree_over_every_block_is_dense_tree_attention(start, n):
    q, k_cache, v_cache, page_table = sequence(start, n, (6, 2), 32, 8, seed=9)
    tree = random_tree(n, seed=start)
    config = UniSparseConfig(block_size=16, granularities=(8, 16), mass=1.0, max_blocks=1000)
    out = unisparse_prefill(q, k_cache, v_cache, page_table, start, 0.2, config, tree=tree)
    keys = gather_sequence(k_cache, page_table, start + n)
    values = gather_sequence(v_cache, page_table, start + n)
    assert_close(out, prefill_attention(q, keys, values, start, 0.2, tree))


@pytest.mark.parametrize("start", [pytest.param(37, id="mid-block"), pytest.param(512, id="block-start")])
def test_unisparse_tree_wider_than_local_blocks_sees_every_ancestor(start):
    """A tree over five query blocks, only the sink and local blocks chosen: each node attends the
    cached keys of those blocks and of the block where the tree begins, and every one of its ancestors,
    also those further back."""
    n, size = 70, 16
    q, k_cache, v_cache, page_table = sequence(start, n, (6, 2), 32, 8, seed=4)
    tree = random_tree(n, seed=start)
    own = (start + torch.arange(n)) // size
    assert (tree & (own[None, :] < own[:, None] - 1)).any()  # ancestors past the local blocks
    config = UniSparseConfig(block_size=size, granularities=(size,), mass=0.01, max_blocks=0)
    out = unisparse_prefill(q, k_cache, v_cache, page_table, start, 0.2, config, tree=tree)
    keys = gather_sequence(k_cache, page_table, start + n).float().repeat_interleave(3, dim=1)
    values = gather_sequence(v_cache, page_table, start + n).float().repeat_interleave(3, dim=1)
    key_block = torch.arange(start + n) // size
    cached = (torch.arange(start + n) < start) & ((key_block < 1) | (key_block == start // size)
                                                 | (key_block > own[:, None] - 2))
    allowed = cached | torch.cat([torch.zeros(n, start, dtype=torch.bool), tree], 1)
    logits = torch.einsum("nhd,thd->hnt", q.float(), keys) * 0.2
    expected = torch.einsum("hnt,thd->nhd", logits.masked_fill(~allowed, float("-inf")).softmax(-1), values)
    assert_close(out, expected)


@pytest.mark.parametrize("start, n", SPANS + [pytest.param(SCORE_PAGES * 8 + 3, 77, id="several-runs")])
@pytest.mark.parametrize("dtype, heads, page_size, block_size", CPU_SHAPES)
@pytest.mark.parametrize("consecutive", [False, True], ids=["scattered", "consecutive"])
def test_cpu_composite_scoring_matches_reference(dtype, heads, page_size, block_size, start, n, consecutive):
    q, k_cache, _, page_table = sequence(start, n, heads, 32, page_size, dtype, seed=start + n, key_scale=2.0)
    if consecutive:  # pages in order: read as views (the scattered ones are gathered)
        k_cache, page_table = k_cache[page_table.long()], torch.arange(len(page_table), dtype=torch.int32)
    length = start + n
    for granularity in (1, block_size):
        queries, _ = query_composites(q, start, granularity)
        composite = start // granularity + torch.arange(queries.shape[1])
        last_pos = torch.clamp((composite + 1) * granularity, max=length) - 1
        shares = composite_shares_cpu(queries, last_pos, k_cache, page_table, length, 0.2, block_size)
        expected = composite_shares_reference(queries, last_pos, k_cache, page_table, length, 0.2, block_size)
        assert_close(shares, expected)


@pytest.mark.parametrize("start, n", SPANS)
def test_unisparse_prefill_of_every_block_is_dense_causal_attention(start, n):
    q, k_cache, v_cache, page_table = sequence(start, n, (6, 2), 32, 8, seed=7)
    config = UniSparseConfig(block_size=16, granularities=(8, 16), mass=1.0, max_blocks=1000)
    out = unisparse_prefill(q, k_cache, v_cache, page_table, start, 1 / math.sqrt(32), config)
    keys = gather_sequence(k_cache, page_table, start + n)
    values = gather_sequence(v_cache, page_table, start + n)
    assert_close(out, prefill_attention(q, keys, values, start, 1 / math.sqrt(32)))


def test_sparse_choice_changes_the_output_only_where_blocks_were_left_out():
    start, n, size = 200, 60, 16
    q, k_cache, v_cache, page_table = sequence(start, n, (6, 2), 32, 8, seed=8)
    config = UniSparseConfig(block_size=size, granularities=(size,), mass=0.3, max_blocks=1)
    out = unisparse_prefill(q, k_cache, v_cache, page_table, start, 0.2, config)
    dense = block_sparse_prefill_reference(q, k_cache, v_cache, page_table, start, 0.2, None, size)
    mass = estimate_block_mass(q, k_cache, page_table, start, 0.2, config)
    blocks, _ = select_blocks(mass, start, start + n, config)
    sparse = block_sparse_prefill_reference(q, k_cache, v_cache, page_table, start, 0.2, blocks, size)
    assert_close(out, sparse)
    assert (out - dense).abs().max() > 1e-3  # left-out blocks carried attention


@pytest.mark.parametrize("dense_last", [1, 2])
def test_dense_last_blocks_attend_like_dense_and_leave_the_others_sparse(dense_last):
    """The last query blocks (a prompt's question) attend every earlier key; the rest keep their choice."""
    start, n, size = 200, 60, 16
    q, k_cache, v_cache, page_table = sequence(start, n, (6, 2), 32, 8, seed=8)
    sparse_config = UniSparseConfig(block_size=size, granularities=(size,), mass=0.3, max_blocks=1)
    config = UniSparseConfig(block_size=size, granularities=(size,), mass=0.3, max_blocks=1,
                             dense_last_blocks=dense_last)
    first, num_query_blocks = prefill_blocks(start, start + n, size)
    mass = estimate_block_mass(q, k_cache, page_table, start, 0.2, config)
    blocks, counts = select_blocks(mass, start, start + n, config)
    sparse_blocks, _ = select_blocks(mass, start, start + n, sparse_config)
    for head, rows in enumerate(chosen_sets(blocks)):
        for i, chosen in enumerate(rows):
            if i >= num_query_blocks - dense_last:
                assert chosen == set(range(first + i + 1)) and counts[head, i] == first + i + 1
            else:
                assert chosen == chosen_sets(sparse_blocks)[head][i]
    out = unisparse_prefill(q, k_cache, v_cache, page_table, start, 0.2, config)
    dense = block_sparse_prefill_reference(q, k_cache, v_cache, page_table, start, 0.2, None, size)
    sparse = unisparse_prefill(q, k_cache, v_cache, page_table, start, 0.2, sparse_config)
    tail = torch.arange(start, start + n) // size - first >= num_query_blocks - dense_last
    assert_close(out[tail], dense[tail])
    assert_close(out[~tail], sparse[~tail])
    assert (sparse[tail] - dense[tail]).abs().max() > 1e-3  # the sparse choice had left blocks out there
