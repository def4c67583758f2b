import math

import pytest
import torch
import torch.nn.functional as F

from asr.attention.config import UniqueConfig
from asr.attention.paged_cache import CacheShape, PagedKVCache
from asr.attention.scoring import score_pages_reference
from asr.attention.selection import select_pages_reference
from asr.attention.softmask import soft_masked_attention, soft_page_log_mask


def random_qk(batch, q_heads, kv_heads, seq, d, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, seq, d, generator=gen, dtype=dtype)
    k = torch.randn(batch, kv_heads, seq, d, generator=gen, dtype=dtype)
    v = torch.randn(batch, kv_heads, seq, d, generator=gen, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("heads", [pytest.param((2, 2), id="mha"), pytest.param((8, 2), id="gqa4")])
def test_zero_temperature_limit_is_the_decode_time_hard_selection(heads):
    """At T -> 0 the last query's mask keeps exactly the pages decode-time selection chooses."""
    page_size, seq = 4, 61
    config = UniqueConfig(page_size=page_size, budget_tokens=6 * page_size, sink_pages=1, local_pages=2)
    q, k, _ = random_qk(1, *heads, seq, 16, seed=7)
    weights = soft_page_log_mask(q, k, config, temperature=1e-5).exp()  # [1, hkv, seq, pages]
    cache = PagedKVCache(CacheShape(1, 32, page_size, heads[1], 16), torch.float32, "cpu")
    sid = cache.add_sequence()
    cache.write(0, k[0].transpose(0, 1), k[0].transpose(0, 1), cache.reserve([sid], [seq]))
    table, lens = cache.page_table([sid]), cache.lengths([sid])
    scores = score_pages_reference(q[:, :, -1], cache.key_stats[0], table, lens, config)
    chosen = select_pages_reference(scores, lens, config)
    for h in range(heads[1]):
        last = weights[0, h, -1]
        hard = set(chosen[0, h].tolist())
        kept = {p for p in range(last.numel()) if last[p] > 0.75}
        half = {p for p in range(last.numel()) if 0.25 < last[p] < 0.75}
        assert len(half) == 1, "the k-th page sits exactly at the threshold (weight 1/2)"
        assert kept | half == hard
        assert all(last[p] < 1e-6 for p in range(last.numel()) if p not in hard)


def test_future_pages_are_masked_and_early_queries_are_dense():
    config = UniqueConfig(page_size=4, budget_tokens=16, sink_pages=1, local_pages=2)
    q, k, _ = random_qk(2, 4, 2, 40, 8, seed=8)
    log_mask = soft_page_log_mask(q, k, config, temperature=0.5)
    for t in range(40):
        assert torch.isinf(log_mask[:, :, t, t // 4 + 1 :]).all()
        if t // 4 + 1 <= 4:  # its causal pages fit the 4-page budget
            assert (log_mask[:, :, t, : t // 4 + 1] == 0).all()
    assert (log_mask[:, :, 39, :] < 0).any(), "late queries are masked somewhere"


def test_budget_covering_the_context_equals_causal_attention():
    config = UniqueConfig(page_size=4, budget_tokens=4 * 64)
    q, k, v = random_qk(2, 8, 2, 37, 16, seed=9)
    out = soft_masked_attention(q, k, v, config, temperature=0.1)
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), is_causal=True
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_soft_mask_lowers_attention_to_low_scoring_pages():
    config = UniqueConfig(page_size=4, budget_tokens=12, sink_pages=1, local_pages=1)
    q, k, v = random_qk(1, 2, 2, 48, 8, seed=10)
    soft = soft_masked_attention(q, k, v, config, temperature=0.05)
    dense = soft_masked_attention(q, k, v, UniqueConfig(page_size=4, budget_tokens=4 * 64), temperature=0.05)
    assert not torch.allclose(soft[:, :, -1], dense[:, :, -1], atol=1e-3)
    torch.testing.assert_close(soft[:, :, :12], dense[:, :, :12])  # within budget: unchanged


def test_gradients_flow_into_q_and_k():
    config = UniqueConfig(page_size=2, budget_tokens=6, sink_pages=1, local_pages=1)
    q, k, v = random_qk(1, 2, 1, 11, 3, seed=11, dtype=torch.float64)
    q.requires_grad_(True)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda q, k: soft_masked_attention(q, k, v, config, temperature=0.7), (q, k)
    )
    log_mask = soft_page_log_mask(q, k, config, temperature=0.7)
    finite = torch.isfinite(log_mask)
    grad_q, grad_k = torch.autograd.grad(log_mask[finite].sum(), (q, k))
    assert grad_q.abs().sum() > 0 and grad_k.abs().sum() > 0, "the mask itself depends on q and k"
    assert math.isfinite(grad_q.sum().item()) and math.isfinite(grad_k.sum().item())
