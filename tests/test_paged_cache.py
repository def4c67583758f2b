import pytest
import torch

from asr.attention.page_stats import STAT_MAX, STAT_MEAN, STAT_MIN, STAT_STD, page_key_stats
from asr.attention.paged_cache import CacheShape, PageAllocator, PagedKVCache, gather_sequence
from asr.errors import CacheCapacityError


def sequence_kv(cache: PagedKVCache, layer: int, seq_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[tokens, kv_heads, head_dim] keys and values of one sequence, in order."""
    pages, n = cache.page_table([seq_id])[0], cache.length(seq_id)
    return gather_sequence(cache.k[layer], pages, n), gather_sequence(cache.v[layer], pages, n)


@pytest.mark.parametrize("page_size", [pytest.param(16, id="P16"), pytest.param(64, id="P64")])
@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
)
def test_random_appends_keep_exact_stats(page_size, dtype):
    gen = torch.Generator().manual_seed(0)
    shape = CacheShape(num_layers=2, num_pages=64, page_size=page_size, num_kv_heads=2, head_dim=8)
    cache = PagedKVCache(shape, dtype, "cpu")
    seqs = [cache.add_sequence() for _ in range(3)]
    written = {s: [] for s in seqs}
    for step in range(12):
        counts = [
            int(torch.randint(0, 2 * page_size if step % 3 == 0 else 2, (1,), generator=gen)) for _ in seqs
        ]
        slots = cache.reserve(seqs, counts)
        new_k = torch.randn(sum(counts), 2, 8, generator=gen) * 3 + 1
        new_v = torch.randn(sum(counts), 2, 8, generator=gen)
        for layer in range(2):
            cache.write(layer, new_k + layer, new_v, slots)
        start = 0
        for s, c in zip(seqs, counts):
            written[s].append((new_k[start : start + c], new_v[start : start + c]))
            start += c
    for s in seqs:
        keys = (torch.cat([k for k, _ in written[s]]) + 1).to(dtype)  # layer 1 got keys + 1
        values = torch.cat([v for _, v in written[s]]).to(dtype)
        assert cache.length(s) == keys.shape[0]
        got_k, got_v = sequence_kv(cache, 1, s)
        torch.testing.assert_close(got_k, keys)
        torch.testing.assert_close(got_v, values)
        for index, page in enumerate(cache.pages(s)):
            page_keys = keys[index * page_size : (index + 1) * page_size].double()
            stats = cache.key_stats[1, page].double()  # [kv_heads, 4, d]
            tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.06, rtol=0.02)
            torch.testing.assert_close(stats[:, STAT_MEAN], page_keys.mean(0), **tol)
            torch.testing.assert_close(stats[:, STAT_STD], page_keys.std(0, unbiased=False), **tol)
            torch.testing.assert_close(stats[:, STAT_MIN], page_keys.amin(0), **tol)
            torch.testing.assert_close(stats[:, STAT_MAX], page_keys.amax(0), **tol)


def test_page_table_and_lengths_for_uneven_batch():
    cache = PagedKVCache(CacheShape(1, 32, 16, 1, 4), torch.float32, "cpu")
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.reserve([a, b], [17, 1])
    table, lens = cache.page_table([a, b]), cache.lengths([a, b])
    assert lens.tolist() == [17, 1]
    assert table.shape == (2, 2)
    assert table[0].tolist() == cache.pages(a) and table[1, 0].item() == cache.pages(b)[0]


def test_free_and_reuse_pages():
    cache = PagedKVCache(CacheShape(1, 4, 16, 1, 4), torch.float32, "cpu")
    a = cache.add_sequence()
    cache.reserve([a], [64])
    b = cache.add_sequence()
    with pytest.raises(CacheCapacityError, match="free"):
        cache.reserve([b], [1])
    assert cache.length(b) == 0, "a failed reservation must change nothing"
    used = set(cache.pages(a))
    cache.free_sequence(a)
    slots = cache.reserve([b], [40])
    assert set(cache.pages(b)) <= used and len(cache.pages(b)) == 3
    assert slots.tolist()[:2] == [cache.pages(b)[0] * 16, cache.pages(b)[0] * 16 + 1]


def test_allocator_rejects_overdraw_without_losing_pages():
    alloc = PageAllocator(3)
    pages = alloc.allocate(2)
    with pytest.raises(CacheCapacityError):
        alloc.allocate(2)
    alloc.free(pages)
    assert sorted(alloc.allocate(3)) == [0, 1, 2]


def test_truncate_frees_pages_and_restores_exact_stats():
    gen = torch.Generator().manual_seed(3)
    cache = PagedKVCache(CacheShape(2, 8, 16, 2, 8), torch.float32, "cpu")
    seq = cache.add_sequence()
    keys = torch.randn(50, 2, 8, generator=gen)
    slots = cache.reserve([seq], [50])
    for layer in range(2):
        cache.write(layer, keys, keys, slots)
    cache.truncate(seq, 21)
    assert cache.length(seq) == 21 and len(cache.pages(seq)) == 2 and cache.allocator.num_free == 6
    last = cache.pages(seq)[1]
    torch.testing.assert_close(cache.key_stats[1, last, :, STAT_MEAN], keys[16:21].mean(0))
    torch.testing.assert_close(cache.key_stats[1, last, :, STAT_MAX], keys[16:21].amax(0))
    slots = cache.reserve([seq], [3])
    assert slots.tolist() == [last * 16 + 5, last * 16 + 6, last * 16 + 7]
    with pytest.raises(ValueError):
        cache.truncate(seq, 99)


@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
)
def test_one_token_append_path_equals_reference(dtype):
    """The CPU decode step's single-token append gives the general reference's cache and stats."""
    from asr.attention.append import append_kv, append_kv_reference

    gen = torch.Generator().manual_seed(1)
    pool = (6, 2, 16, 8)
    fast = [
        torch.full(pool, float("nan"), dtype=dtype),
        torch.zeros(pool, dtype=dtype),
        torch.zeros(6, 2, 4, 8, dtype=dtype),
    ]
    slow = [t.clone() for t in fast]
    for slot in [3 * 16 + i for i in range(20)] + [16 * 5]:  # a full page, a partial one, a fresh one
        k, v = torch.randn(1, 2, 8, generator=gen) * 2, torch.randn(1, 2, 8, generator=gen)
        append_kv(*fast, k, v, torch.tensor([slot]))
        append_kv_reference(*slow, k, v, torch.tensor([slot]))
    for got, expected in zip(fast, slow):
        torch.testing.assert_close(got, expected, equal_nan=True, atol=1e-6, rtol=1e-5)


def test_layout_version_moves_only_when_a_sequence_loses_pages():
    cache = PagedKVCache(CacheShape(1, 8, 4, 1, 4), torch.float32, "cpu")
    a, b = cache.add_sequence(), cache.add_sequence()
    version = cache.layout_version
    cache.reserve([a, b], [9, 3])
    assert cache.layout_version == version, "growth keeps page tables valid: only new pages to append"
    cache.truncate(a, 5)
    assert cache.layout_version == version + 1 and cache.page_count(a) == 2
    cache.free_sequence(b)
    assert cache.layout_version == version + 2


def test_gather_sequence_reads_the_reserved_slots_in_order():
    cache = PagedKVCache(CacheShape(1, 16, 4, 1, 4), torch.float32, "cpu")
    a, b = cache.add_sequence(), cache.add_sequence()
    first = cache.reserve([a, b], [3, 5])
    second = cache.reserve([a], [6])
    slots = torch.cat([first, second])
    keys = torch.randn(len(slots), 1, 4)
    cache.write(0, keys, keys, slots)
    order_a = torch.cat([torch.arange(3), torch.arange(8, 14)])
    assert torch.equal(gather_sequence(cache.k[0], cache.page_table([a])[0], 9), keys[order_a])
    assert torch.equal(gather_sequence(cache.v[0], cache.page_table([b])[0], 5), keys[3:8])
    assert cache.pages(a, 1) == cache.pages(a)[1:] and cache.length(a) == 9


@pytest.mark.parametrize("start", [0, 1], ids=["from-first", "from-second"])
def test_rewrite_keys_replaces_its_pages_and_their_stats_only(start):
    gen = torch.Generator().manual_seed(4)
    cache = PagedKVCache(CacheShape(2, 8, 4, 2, 8), torch.float32, "cpu")
    seq = cache.add_sequence()
    keys = torch.randn(10, 2, 8, generator=gen)
    slots = cache.reserve([seq], [10])
    for layer in range(2):
        cache.write(layer, keys + layer, keys, slots)
    last_page = cache.pages(seq)[2]
    untouched_stats = cache.key_stats[:, last_page].clone()
    with pytest.raises(ValueError, match="not all held"):
        cache.rewrite_keys(seq, 4, lambda k, first: k)  # 10 tokens hold 3 pages of 4
    cache.rewrite_keys(seq, 2, lambda k, first: 2 * k, start=start)
    for layer in range(2):
        got, _ = sequence_kv(cache, layer, seq)
        torch.testing.assert_close(got[: 4 * start], keys[: 4 * start] + layer)
        torch.testing.assert_close(got[4 * start : 8], 2 * (keys[4 * start : 8] + layer))
        torch.testing.assert_close(got[8:], keys[8:] + layer)
        for index, page in enumerate(cache.pages(seq, 0, 2)):
            page_keys = got[index * 4 : (index + 1) * 4]
            torch.testing.assert_close(cache.key_stats[layer, page, :, STAT_MEAN], page_keys.mean(0))
            torch.testing.assert_close(cache.key_stats[layer, page, :, STAT_MAX], page_keys.amax(0))
    assert torch.equal(cache.key_stats[:, last_page], untouched_stats)
    # the partial last page: its statistics over its two filled slots only
    cache.rewrite_keys(seq, 3, lambda k, first: k - 1, start=2)
    for layer in range(2):
        got, _ = sequence_kv(cache, layer, seq)
        torch.testing.assert_close(got[8:], keys[8:] + layer - 1)
        torch.testing.assert_close(cache.key_stats[layer, last_page, :, STAT_MEAN], got[8:].mean(0))
        torch.testing.assert_close(cache.key_stats[layer, last_page, :, STAT_MAX], got[8:].amax(0))


def test_full_page_statistics_without_fill_equal_the_masked_ones():
    keys = torch.randn(5, 2, 4, 8, generator=torch.Generator().manual_seed(9)) * 3 + 1
    torch.testing.assert_close(page_key_stats(keys, None), page_key_stats(keys, torch.full((5,), 4)))
