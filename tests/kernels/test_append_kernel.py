"""Append kernel against ``append_kv_reference``: decode steps (one token per sequence, partial
and fresh pages) and prefill chunks spanning several pages; untouched pages stay bit-identical."""

import pytest
import torch

from asr.attention.append import append_kv_reference
from asr.attention.kernels.append import append_kv_triton
from tests.paged_batch import make_paged_batch
from tests.tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.float32, id="fp32")]


def grow(batch, new_tokens, page_size, seed):
    """Slots for ``new_tokens[row]`` more tokens per sequence (fresh pages from the spare pool),
    laid out as PagedKVCache.reserve does: sequences in order, each sequence's tokens in order."""
    extra = sum(-(-n // page_size) + 1 for n in new_tokens)  # NaN-poisoned spare pages
    batch.k_cache, batch.v_cache, batch.key_stats = (
        torch.cat([t, torch.full((extra,) + t.shape[1:], float("nan"), dtype=t.dtype, device=DEVICE)])
        for t in (batch.k_cache, batch.v_cache, batch.key_stats))
    spare = [p for p in range(batch.k_cache.shape[0]) if p not in set(batch.page_table.flatten().tolist())]
    slots = []
    for row, count in enumerate(new_tokens):
        length = int(batch.seq_lens[row])
        pages = batch.page_table[row, : -(-length // page_size)].tolist()
        for pos in range(length, length + count):
            if pos // page_size >= len(pages):
                pages.append(spare.pop())
            slots.append(pages[pos // page_size] * page_size + pos % page_size)
    gen = torch.Generator().manual_seed(seed)
    shape = (len(slots), batch.k_cache.shape[1], batch.k_cache.shape[3])
    return (
        torch.tensor(slots, device=DEVICE),
        torch.randn(shape, generator=gen),
        torch.randn(shape, generator=gen),
    )


def run_both(batch, slots, new_k, new_v, dtype):
    stats = batch.key_stats.clone()
    caches = [t.clone() for t in (batch.k_cache, batch.v_cache, stats)]
    append_kv_reference(*caches, new_k.to(DEVICE), new_v.to(DEVICE), slots)
    append_kv_triton(
        batch.k_cache, batch.v_cache, stats, new_k.to(DEVICE).to(dtype), new_v.to(DEVICE).to(dtype), slots
    )
    pages = torch.unique(slots // batch.k_cache.shape[2])
    for got, want in ((batch.k_cache, caches[0]), (batch.v_cache, caches[1])):
        assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)), "cache rows differ"
    assert_close(stats[pages].float(), caches[2][pages].float(), dtype)
    untouched = torch.ones(stats.shape[0], dtype=torch.bool, device=DEVICE)
    untouched[pages] = False
    assert torch.equal(stats[untouched].nan_to_num(7.0), batch.key_stats[untouched].nan_to_num(7.0)), (
        "stats of untouched pages changed"
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [pytest.param(16, id="P16"), pytest.param(64, id="P64")])
def test_decode_step_append(dtype, page_size):
    lengths = [page_size, 1, 3 * page_size - 1, 70]  # fresh page, partial pages, page completed
    batch = make_paged_batch(lengths, 8, 2, 64, page_size, dtype, seed=30, device=DEVICE)
    slots, new_k, new_v = grow(batch, [1] * len(lengths), page_size, seed=31)
    run_both(batch, slots, new_k, new_v, dtype)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_chunk_append(head_dim):
    page_size, lengths = 16, [5, 16, 40]
    batch = make_paged_batch(lengths, 4, 4, head_dim, page_size, torch.bfloat16, seed=32, device=DEVICE)
    slots, new_k, new_v = grow(batch, [30, 1, 50], page_size, seed=33)  # runs span several pages
    run_both(batch, slots, new_k, new_v, torch.bfloat16)
