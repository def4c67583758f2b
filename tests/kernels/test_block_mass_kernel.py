"""Composite scoring kernel against ``composite_shares_reference`` (fp32 on the kernel's rounded
inputs): composites of several granularities from queries starting and ending mid-block, more
composites than one program holds, GQA, NaN-poisoned page slack."""

import math

import pytest
import torch

from asr.attention.block_selection import composite_shares_reference, query_composites
from asr.attention.kernels.block_mass import ROWS, composite_shares_triton
from tests.kernels.test_prefill_kernel import sequence
from tests.tolerances import assert_close

SHAPES = [pytest.param(dtype, d, page, block, heads, id=f"{name}-d{d}-P{page}-B{block}-{heads[0]}q{heads[1]}")
          for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"))
          for d in (64, 128) for page, block in ((16, 32), (16, 64)) for heads in ((6, 2), (2, 2))]


@pytest.mark.parametrize("granularity", [1, 16])
@pytest.mark.parametrize("start, n", [pytest.param(0, 70, id="fresh"), pytest.param(37, 90, id="mid-block"),
                                      pytest.param(300, 1, id="one-token")])
@pytest.mark.parametrize("dtype, head_dim, page_size, block_size, heads", SHAPES)
def test_composite_shares_kernel_matches_reference(dtype, head_dim, page_size, block_size, heads, start, n,
                                                   granularity):
    q, k_cache, _, page_table = sequence(start, n, heads, head_dim, page_size, dtype, seed=start + n)
    queries, _ = query_composites(q, start, granularity)
    queries = queries.to(dtype).float()  # the kernel's operands
    length = start + n
    composite = start // granularity + torch.arange(queries.shape[1], device=q.device)
    last_pos = torch.clamp((composite + 1) * granularity, max=length) - 1
    scale = 1 / math.sqrt(head_dim)
    shares = composite_shares_triton(queries, last_pos, k_cache, page_table, length, scale, block_size)
    expected = composite_shares_reference(queries, last_pos, k_cache.float(), page_table, length, scale,
                                          block_size)
    if granularity == 1 and n > 1:
        assert queries.shape[1] > ROWS  # composites of several programs
    assert_close(shares, expected, dtype)
    assert_close(shares.sum(-1), torch.ones_like(shares[..., 0]), dtype)
