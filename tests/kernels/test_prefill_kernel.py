"""Block-sparse prefill kernel against ``block_sparse_prefill_reference`` (fp32 reference on the
kernel's own bf16/fp16 inputs): chosen blocks from the real selector and from random choices,
queries that start and end mid-block, GQA, NaN-poisoned page slack and outputs."""

import math

import pytest
import torch

from asr.attention.block_selection import estimate_block_mass, select_blocks
from asr.attention.config import UniSparseConfig
from asr.attention.kernels.prefill import block_sparse_prefill_triton
from asr.attention.prefill import block_sparse_prefill_reference
from tests.block_choice import random_blocks
from tests.paged_batch import make_paged_batch
from tests.tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [pytest.param(dtype, d, page, block, (6, 2), id=f"{name}-d{d}-P{page}-B{block}-gqa3")
          for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"))
          for d in (64, 128) for page, block in ((16, 32), (16, 64))]
SHAPES += [pytest.param(torch.bfloat16, 64, 32, 64, heads, id=f"bf16-d64-P32-B64-{name}")
           for heads, name in (((2, 2), "mha"), ((8, 1), "gqa8"))]
# (cached tokens, new tokens): a first prefill, one token, mid-block start and end, many blocks
SPANS = [pytest.param(0, 70, id="fresh"), pytest.param(100, 1, id="one-token"),
         pytest.param(37, 90, id="mid-block"), pytest.param(300, 64, id="aligned")]


def sequence(start, n, heads, head_dim, page_size, dtype, seed):
    """One sequence of ``start + n`` tokens in scattered pages, and ``n`` new queries."""
    batch = make_paged_batch([start + n], *heads, head_dim, page_size, dtype, seed=seed, device=DEVICE)
    q = torch.randn(n, heads[0], head_dim, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    return q.to(DEVICE), batch.k_cache, batch.v_cache, batch.page_table[0]


def check(q, k_cache, v_cache, page_table, start, blocks, block_size):
    scale = 1 / math.sqrt(q.shape[-1])
    out = torch.full_like(q, float("nan"))
    block_sparse_prefill_triton(q, k_cache, v_cache, page_table, start, scale, blocks, block_size, out=out)
    expected = block_sparse_prefill_reference(q.float(), k_cache.float(), v_cache.float(), page_table, start,
                                              scale, blocks, block_size)
    assert_close(out.float(), expected, q.dtype)


@pytest.mark.parametrize("start, n", SPANS)
@pytest.mark.parametrize("dtype, head_dim, page_size, block_size, heads", SHAPES)
def test_kernel_over_selected_blocks_matches_reference(dtype, head_dim, page_size, block_size, heads, start,
                                                       n):
    q, k_cache, v_cache, page_table = sequence(start, n, heads, head_dim, page_size, dtype, seed=start + n)
    config = UniSparseConfig(block_size=block_size, granularities=(16,), mass=0.6, max_blocks=2)
    mass = estimate_block_mass(q, k_cache, page_table, start, 1 / math.sqrt(head_dim), config)
    blocks, _ = select_blocks(mass, start, start + n, config)
    check(q, k_cache, v_cache, page_table, start, blocks, block_size)


@pytest.mark.parametrize("dtype, head_dim, page_size, block_size, heads", SHAPES[:4])
def test_kernel_over_random_and_every_block_matches_reference(dtype, head_dim, page_size, block_size, heads):
    start, n = 450, 130
    q, k_cache, v_cache, page_table = sequence(start, n, heads, head_dim, page_size, dtype, seed=5)
    blocks = random_blocks(heads[1], start, start + n, block_size, keep=0.4, seed=6).to(DEVICE)
    check(q, k_cache, v_cache, page_table, start, blocks, block_size)
    every = random_blocks(heads[1], start, start + n, block_size, keep=1.0, seed=6).to(DEVICE)
    check(q, k_cache, v_cache, page_table, start, every, block_size)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("head_dim, block_size", [(64, 64), (128, 128)])
def test_kernel_at_real_size_matches_reference(head_dim, block_size):
    """A 2k-token chunk appended to 14k cached tokens, 32 query heads over 8 kv heads."""
    start, n = 14000, 2048
    q, k_cache, v_cache, page_table = sequence(start, n, (32, 8), head_dim, 16, torch.bfloat16, seed=7)
    config = UniSparseConfig(block_size=block_size, granularities=(block_size,), mass=0.9, max_blocks=32)
    mass = estimate_block_mass(q, k_cache, page_table, start, 1 / math.sqrt(head_dim), config)
    blocks, _ = select_blocks(mass, start, start + n, config)
    check(q, k_cache, v_cache, page_table, start, blocks, block_size)
