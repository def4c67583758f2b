"""The blockwise soft-mask attention against the reference (asr.attention.softmask), its gradients,
its T -> 0 limit, padding and cache positions, and its peak memory."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asr.attention.config import SoftMaskConfig, UniqueConfig
from asr.attention.paged_cache import CacheShape, PagedKVCache
from asr.attention.scoring import score_pages_reference
from asr.attention.selection import select_pages_reference
from asr.attention.softmask import soft_masked_attention
from asr.attention.softmask_blocks import soft_mask_attention
from tests.tolerances import assert_close


def random_qkv(batch, q_heads, kv_heads, seq, d, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, h, seq, d, generator=gen).to(dtype) for h in (q_heads, kv_heads, kv_heads)]


SHAPES = [
    pytest.param(2, 2, 61, 4, 16, id="mha-partial-page"),
    pytest.param(9, 3, 37, 8, 7, id="gqa3-ragged-blocks"),
    pytest.param(8, 2, 64, 4, 64, id="gqa4-one-block"),
    pytest.param(4, 1, 1, 4, 16, id="one-token"),
]


@pytest.mark.parametrize("method", ["unique", "quest"])
@pytest.mark.parametrize("q_heads,kv_heads,seq,page_size,block", SHAPES)
def test_matches_the_reference(q_heads, kv_heads, seq, page_size, block, method):
    sparse = UniqueConfig(page_size=page_size, budget_tokens=5 * page_size, method=method)
    q, k, v = random_qkv(2, q_heads, kv_heads, seq, 16, seed=seq + q_heads)
    expected = soft_masked_attention(q, k, v, sparse, temperature=0.3)
    actual = soft_mask_attention(q, k, v, SoftMaskConfig(sparse, 0.3, query_block=block))
    assert_close(actual, expected)


@pytest.mark.parametrize("q_heads,kv_heads,seq,page_size,block", SHAPES[:3])
def test_gradients_match_autograd_on_the_reference(q_heads, kv_heads, seq, page_size, block):
    sparse = UniqueConfig(page_size=page_size, budget_tokens=4 * page_size, sink_pages=1, local_pages=1)
    inputs = [x.requires_grad_(True) for x in random_qkv(2, q_heads, kv_heads, seq, 8, 3, torch.float64)]
    gen = torch.Generator().manual_seed(4)
    grad_out = torch.randn(2, q_heads, seq, 8, dtype=torch.float64, generator=gen)
    expected = torch.autograd.grad(soft_masked_attention(*inputs, sparse, temperature=0.5), inputs, grad_out)
    blocks = soft_mask_attention(*inputs, SoftMaskConfig(sparse, 0.5, query_block=block))
    actual = torch.autograd.grad(blocks, inputs, grad_out)
    for name, got, want in zip("qkv", actual, expected):
        assert want.abs().sum() > 0, f"reference gradient of {name} is zero: the test would pass vacuously"
        assert_close(got, want)


def test_gradcheck():
    sparse = UniqueConfig(page_size=2, budget_tokens=6, sink_pages=1, local_pages=1)
    inputs = [x.requires_grad_(True) for x in random_qkv(1, 2, 1, 11, 3, 11, torch.float64)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: soft_mask_attention(q, k, v, SoftMaskConfig(sparse, 0.7, query_block=4)), inputs
    )


def test_right_padded_rows_match_the_reference_on_each_row():
    sparse = UniqueConfig(page_size=4, budget_tokens=16, sink_pages=1, local_pages=2)
    lengths = [53, 30, 1]
    q, k, v = random_qkv(3, 6, 3, 53, 8, seed=5)
    out = soft_mask_attention(
        q, k, v, SoftMaskConfig(sparse, 0.4, query_block=8), key_lengths=torch.tensor(lengths)
    )
    for row, length in enumerate(lengths):
        expected = soft_masked_attention(
            *(x[row : row + 1, :, :length] for x in (q, k, v)), sparse, temperature=0.4
        )
        assert_close(out[row : row + 1, :, :length], expected)


def test_queries_after_a_cache_match_the_last_rows_of_a_full_pass():
    sparse = UniqueConfig(page_size=4, budget_tokens=16, sink_pages=1, local_pages=1)
    q, k, v = random_qkv(2, 4, 2, 70, 8, seed=6)
    full = soft_masked_attention(q, k, v, sparse, temperature=0.2)
    config = SoftMaskConfig(sparse, 0.2, query_block=3)
    last = soft_mask_attention(q[:, :, -5:], k, v, config)  # default positions: the last five
    assert_close(last, full[:, :, -5:])
    # ragged: row 1 holds 50 keys; its queries at 45..49 see only those
    positions = torch.tensor([[65, 66, 67, 68, 69], [45, 46, 47, 48, 49]])
    out = soft_mask_attention(
        torch.stack([q[0, :, 65:70], q[1, :, 45:50]]), k, v, config, key_lengths=torch.tensor([70, 50]),
        query_positions=positions,
    )
    short = soft_masked_attention(*(x[1:, :, :50] for x in (q, k, v)), sparse, temperature=0.2)
    assert_close(out[0], full[0, :, 65:70])
    assert_close(out[1], short[0, :, 45:50])


def test_dense_config_is_causal_attention():
    q, k, v = random_qkv(2, 6, 2, 45, 16, seed=7)
    out = soft_mask_attention(q, k, v, SoftMaskConfig(sparse=None, query_block=16))
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), is_causal=True
    )
    assert_close(out, expected)


def hard_decode_attention(q, k, v, sparse):
    """The last query's attention over the decode-time top-k pages (``select_pages_reference`` over a
    paged cache), the lowest-scoring chosen candidate page at weight 1/2: the T -> 0 limit of the mask.
    q: [1, q_heads, 1, d]; k, v: [1, kv_heads, seq, d]. Returns [1, q_heads, 1, d]."""
    kv_heads, seq, d = k.shape[1:]
    group = q.shape[1] // kv_heads
    cache = PagedKVCache(CacheShape(1, 64, sparse.page_size, kv_heads, d), torch.float64, "cpu")
    seq_id = cache.add_sequence()
    cache.write(0, k[0].transpose(0, 1), v[0].transpose(0, 1), cache.reserve([seq_id], [seq]))
    table, lengths = cache.page_table([seq_id]), cache.lengths([seq_id])
    scores = score_pages_reference(q[:, :, 0], cache.key_stats[0], table, lengths, sparse)  # [1, hkv, pages]
    chosen = select_pages_reference(scores, lengths, sparse)[0]  # [hkv, num_select]
    pages = -(-seq // sparse.page_size)
    last_page = pages - 1
    page_log_weight = torch.full((kv_heads, pages), float("-inf"), dtype=torch.float64)
    for head in range(kv_heads):
        picked = [p for p in chosen[head].tolist() if p >= 0]
        page_log_weight[head, picked] = 0.0
        candidates = [p for p in picked if sparse.sink_pages <= p <= last_page - sparse.local_pages]
        kth = min(candidates, key=lambda p: scores[0, head, p].item())
        page_log_weight[head, kth] = math.log(0.5)
    key_log_weight = page_log_weight.repeat_interleave(sparse.page_size, dim=1)[:, :seq]
    logits = torch.einsum("hgd,hsd->hgs", q[0, :, 0].view(kv_heads, group, d), k[0]) / math.sqrt(d)
    probs = (logits + key_log_weight[:, None]).softmax(dim=-1)
    return torch.einsum("hgs,hsd->hgd", probs, v[0]).reshape(1, -1, 1, d)


def test_zero_temperature_approaches_the_hard_top_k_mask():
    sparse = UniqueConfig(page_size=4, budget_tokens=6 * 4, sink_pages=1, local_pages=2)
    q, k, v = random_qkv(1, 6, 3, 93, 16, seed=8, dtype=torch.float64)
    hard = hard_decode_attention(q[:, :, -1:], k, v, sparse)
    errors = [
        (soft_mask_attention(q[:, :, -1:], k, v, SoftMaskConfig(sparse, t)) - hard).abs().max().item()
        for t in (3.0, 0.3, 0.03, 3e-4)
    ]
    assert all(a > b for a, b in zip(errors, errors[1:])), f"not approaching the hard mask: {errors}"
    assert errors[-1] < 1e-9 < 0.1 < errors[0]


PEAK_SCRIPT = """
import json, sys, torch
from asr.attention.config import SoftMaskConfig, UniqueConfig
from asr.attention.softmask import soft_masked_attention
from asr.attention.softmask_blocks import soft_mask_attention
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
sparse = UniqueConfig(page_size=16, budget_tokens=256)


def attention(seq):
    q = torch.randn(1, 8, seq, 32, generator=gen, requires_grad=True)
    k, v = (torch.randn(1, 2, seq, 32, generator=gen, requires_grad=True) for _ in range(2))
    if sys.argv[1] == "reference":
        return soft_masked_attention(q, k, v, sparse, temperature=0.5)
    return soft_mask_attention(q, k, v, SoftMaskConfig(sparse, 0.5, query_block=64))


def peak_rss():  # this process's high-water mark in bytes (VmHWM starts afresh at exec; ru_maxrss
    # would carry the forking parent's)
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


attention(300).square().sum().backward()  # loads the code paths first: growth below is the tensors'
before = peak_rss()
attention(2048).square().sum().backward()
print(json.dumps(peak_rss() - before))
"""


def test_blockwise_peak_memory_stays_far_below_the_reference():
    """Forward and backward at 2048 tokens, 8 query heads: the reference holds several [heads, seq,
    seq] tensors at once; the blockwise path holds one query block's worth."""

    def peak_growth(path: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, path], capture_output=True, text=True, check=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=Path(__file__).parents[1],
        )
        return json.loads(result.stdout)

    reference, blocks = peak_growth("reference"), peak_growth("blocks")
    one_score_matrix = 8 * 2048 * 2048 * 4
    assert reference > 2 * one_score_matrix, f"reference grew only {reference / 2**20:.0f} MiB"
    assert blocks < min(one_score_matrix, reference / 3), (
        f"blockwise grew {blocks / 2**20:.0f} MiB, reference {reference / 2**20:.0f} MiB"
    )
