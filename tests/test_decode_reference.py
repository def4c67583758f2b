import math

import pytest
import torch

from asr.attention.config import UniqueConfig
from asr.attention.decode import paged_decode_reference
from asr.attention.scoring import score_pages_reference
from asr.attention.selection import select_pages_reference
from tests.paged_batch import make_paged_batch
from tests.tolerances import assert_close

GQA = [pytest.param((4, 4), id="mha"), pytest.param((8, 2), id="gqa4"), pytest.param((16, 2), id="gqa8")]
LENGTHS = [pytest.param([1, 63, 127], id="short"), pytest.param([1000, 37, 300], id="ragged1000")]


def dense_attention(q, keys, values, scale):
    """Per sequence: q [q_heads, d], keys/values [len, kv_heads, d] -> out [q_heads, d], lse [q_heads]."""
    group = q.shape[0] // keys.shape[1]
    k = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [q_heads, len, d]
    v = values.repeat_interleave(group, dim=1).transpose(0, 1)
    logits = torch.einsum("hd,htd->ht", q.double(), k.double()) * scale
    lse = logits.logsumexp(-1)
    return torch.einsum("ht,htd->hd", (logits - lse[:, None]).exp(), v.double()), lse


@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("head_dim", [pytest.param(64, id="d64"), pytest.param(128, id="d128")])
@pytest.mark.parametrize("page_size", [pytest.param(16, id="P16"), pytest.param(64, id="P64")])
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
)
def test_dense_paged_decode_matches_attention(heads, head_dim, page_size, lengths, dtype):
    batch = make_paged_batch(lengths, *heads, head_dim, page_size, dtype)
    scale = 1 / math.sqrt(head_dim)
    out, lse = paged_decode_reference(
        batch.q, batch.k_cache, batch.v_cache, batch.page_table, batch.seq_lens, scale
    )
    for row in range(len(lengths)):
        ref_out, ref_lse = dense_attention(batch.q[row].float(), batch.keys[row], batch.values[row], scale)
        assert_close(out[row].float(), ref_out, dtype)
        assert_close(lse[row], ref_lse, torch.float32)


@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("page_size", [pytest.param(16, id="P16"), pytest.param(64, id="P64")])
def test_full_budget_sparse_equals_dense(heads, page_size):
    lengths = [1000, 1, 300]
    batch = make_paged_batch(lengths, *heads, 64, page_size, torch.float32, seed=1)
    config = UniqueConfig(page_size=page_size, budget_tokens=page_size * 64)
    scores = score_pages_reference(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    chosen = select_pages_reference(scores, batch.seq_lens, config)
    args = (batch.q, batch.k_cache, batch.v_cache, batch.page_table, batch.seq_lens, 0.125)
    sparse_out, sparse_lse = paged_decode_reference(*args, chosen)
    dense_out, dense_lse = paged_decode_reference(*args)
    assert_close(sparse_out, dense_out)
    assert_close(sparse_lse, dense_lse)


@pytest.mark.parametrize("heads", GQA)
def test_sparse_decode_attends_exactly_the_chosen_pages(heads):
    page_size, lengths = 16, [700, 257, 33]
    batch = make_paged_batch(lengths, *heads, 64, page_size, torch.float32, seed=2)
    config = UniqueConfig(page_size=page_size, budget_tokens=128)
    scores = score_pages_reference(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    chosen = select_pages_reference(scores, batch.seq_lens, config)
    out, lse = paged_decode_reference(batch.q, batch.k_cache, batch.v_cache, batch.page_table, batch.seq_lens,
                                      0.125, chosen)
    q_heads, kv_heads = heads
    group = q_heads // kv_heads
    for row, n in enumerate(lengths):
        for h in range(q_heads):
            pages = [p for p in chosen[row, h // group].tolist() if p >= 0]
            tokens = torch.cat([torch.arange(p * page_size, min((p + 1) * page_size, n)) for p in pages])
            ref_out, ref_lse = dense_attention(
                batch.q[row, h : h + 1],
                batch.keys[row][tokens, h // group : h // group + 1],
                batch.values[row][tokens, h // group : h // group + 1],
                0.125,
            )
            assert_close(out[row, h], ref_out[0])
            assert_close(lse[row, h], ref_lse[0])


@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
)
@pytest.mark.parametrize("sparse", [pytest.param(False, id="dense"), pytest.param(True, id="sparse")])
def test_cpu_path_matches_reference(heads, lengths, dtype, sparse):
    from asr.attention.decode import paged_decode

    batch = make_paged_batch(lengths, *heads, 64, 16, dtype, seed=4)  # slack is NaN-poisoned
    chosen = None
    if sparse:
        config = UniqueConfig(page_size=16, budget_tokens=128)
        scores = score_pages_reference(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
        chosen = select_pages_reference(scores, batch.seq_lens, config)
    args = (batch.q, batch.k_cache, batch.v_cache, batch.page_table, batch.seq_lens, 0.125, chosen)
    out, lse = paged_decode(*args, need_lse=False)
    assert lse is None
    expected, _ = paged_decode_reference(*args)
    assert_close(out.float(), expected.float(), dtype)


@pytest.mark.parametrize("length", [1, 16, 17, 200])
def test_cpu_path_reads_consecutive_pages_in_place(length):
    """A lone sequence's pages are consecutive ids: the CPU path reads them as a view (the slack of
    the last page poisoned with NaN must stay unread), and matches the reference."""
    from asr.attention.decode import paged_decode

    gen = torch.Generator().manual_seed(length)
    pages = -(-length // 16)
    k_cache = torch.full((pages + 4, 2, 16, 64), float("nan"), dtype=torch.bfloat16)
    v_cache = k_cache.clone()
    keys, values = torch.randn(2, pages * 16, 2, 64, generator=gen).to(torch.bfloat16)
    k_cache[2 : 2 + pages] = keys.view(pages, 16, 2, 64).transpose(1, 2)
    v_cache[2 : 2 + pages] = values.view(pages, 16, 2, 64).transpose(1, 2)
    last, offset = divmod(length, 16)
    if offset:
        k_cache[2 + last, :, offset:] = float("nan")
        v_cache[2 + last, :, offset:] = float("nan")
    table = torch.arange(2, 2 + pages, dtype=torch.int32)[None]
    q = torch.randn(1, 8, 64, generator=gen).to(torch.bfloat16)
    args = (q, k_cache, v_cache, table, torch.tensor([length], dtype=torch.int32), 0.125)
    out, _ = paged_decode(*args, need_lse=False)
    expected, _ = paged_decode_reference(*args)
    assert_close(out.float(), expected.float(), torch.bfloat16)
