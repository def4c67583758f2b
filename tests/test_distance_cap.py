"""The distance ceiling for long contexts: keys move to the collapsed position exactly, stats follow."""

from __future__ import annotations

import pytest
import torch

from asr.attention.page_stats import page_key_stats
from asr.attention.paged_cache import CacheShape, PagedKVCache
from asr.llm.config import SamplingParams
from asr.llm.distance_cap import DistanceCap, cap_distances, rotate_keys
from asr.llm.layers import apply_rotary
from asr.llm.model import RotaryEmbedding
from asr.llm.sequence import Sequence
from tests.test_llm_engine import engine_for, save_tiny_model, token_ids
from tests.tolerances import assert_close


def test_rotating_embedded_keys_equals_embedding_at_the_new_position():
    head_dim = 16
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    rotary = RotaryEmbedding(inv_freq, 1.0)
    raw = torch.randn(9, 2, head_dim)
    start = torch.arange(100, 109)
    target = torch.tensor([3, 7, 7, 50, 0, 1000, 104, 12, 5])
    at_start = apply_rotary(raw, *rotary(start, torch.float32))
    moved = rotate_keys(at_start.transpose(0, 1), (target - start)[None, :], inv_freq).transpose(0, 1)
    assert_close(moved, apply_rotary(raw, *rotary(target, torch.float32)))


def sequence_keys(engine, seq) -> torch.Tensor:
    """[layers, tokens, kv_heads, head_dim] keys of ``seq`` in token order."""
    pages = engine.cache.pages(seq.seq_id)
    keys = engine.cache.k[:, pages]  # [layers, pages, heads, P, d]
    return keys.permute(0, 1, 3, 2, 4).flatten(1, 2)[:, : seq.num_tokens]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen2")
    save_tiny_model("qwen2", directory, max_context=1024)
    return directory


def test_old_pages_collapse_to_one_position_and_stats_follow(tiny_dir):
    engine = engine_for(tiny_dir, page_size=4)
    inv_freq = engine.model.rotary.inv_freq
    cap = DistanceCap(max_distance=40, slack=10)
    seq = engine.new_sequence()
    engine.append(seq, token_ids=token_ids(50, seed=5))
    assert not engine.cap_distances(seq, cap)  # 50 <= 40 + 10: nothing to do

    engine.append(seq, token_ids=token_ids(50, seed=6))
    before = sequence_keys(engine, seq).clone()
    assert engine.cap_distances(seq, cap)
    assert (seq.collapsed_pages, seq.collapsed_position) == (15, 60)  # (100 - 40) // 4 pages at 100 - 40
    after = sequence_keys(engine, seq)
    own = torch.arange(60)
    expected = rotate_keys(before[:, :60].transpose(1, 2), (60 - own)[None, None, :], inv_freq).transpose(
        1, 2
    )
    assert_close(after[:, :60], expected)
    assert torch.equal(after[:, 60:], before[:, 60:])  # newer tokens keep their own positions

    engine.append(seq, token_ids=token_ids(21, seed=7))  # 121 - 60 > 50: collapse again, to 81
    before = sequence_keys(engine, seq).clone()
    assert engine.cap_distances(seq, cap)
    assert (seq.collapsed_pages, seq.collapsed_position) == (20, 81)
    after = sequence_keys(engine, seq)
    current = torch.cat([torch.full((60,), 60), torch.arange(60, 80)])
    expected = rotate_keys(before[:, :80].transpose(1, 2), (81 - current)[None, None, :], inv_freq).transpose(
        1, 2
    )
    assert_close(after[:, :80], expected)

    pages = engine.cache.pages(seq.seq_id, 0, 20)
    for layer in range(engine.cache.shape.num_layers):
        keys = engine.cache.k[layer, pages]
        stats = page_key_stats(keys, torch.full((20,), 4))
        assert_close(engine.cache.key_stats[layer, pages], stats.to(engine.cache.key_stats.dtype))

    # the sequence still decodes, and a rollback past the collapsed pages forgets them
    out = engine.generate(seq, SamplingParams(max_tokens=3))
    assert len(out) <= 3
    engine.truncate(seq, 30)
    assert seq.collapsed_pages == 7


def test_invalid_cap_is_refused():
    with pytest.raises(ValueError):
        DistanceCap(max_distance=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("run_pages", [1, 3, 64], ids=["run1", "run3", "run64"])
@pytest.mark.parametrize("collapsed_before", [0, 5, 11], ids=["first", "mid-run", "run-edge"])
@pytest.mark.parametrize("interleaved", [True, False], ids=["scattered", "consecutive"])
def test_collapse_in_runs_equals_rotating_every_key_from_its_position(dtype, run_pages, collapsed_before,
                                                                      interleaved, monkeypatch):
    """The run-wise collapse (one shared rotation for pages collapsed before, per-token rotations for the
    new ones) against every key rotated from its current position to the target and its page's
    statistics recomputed: scattered pages (two sequences interleaved, keys gathered and written back)
    or consecutive ones (float32 keys moved in place), three kv heads, a partial last page left alone,
    runs that straddle the old/new boundary."""
    monkeypatch.setattr("asr.attention.paged_cache.REWRITE_PAGES", run_pages)
    page_size, head_dim, length = 4, 16, 103
    gen = torch.Generator().manual_seed(run_pages * 100 + collapsed_before)
    cache = PagedKVCache(CacheShape(2, 64, page_size, 3, head_dim), dtype, "cpu")
    seq_id, other = cache.add_sequence(), cache.add_sequence()
    counts = [min(9, length - begin) for begin in range(0, length, 9)]
    # interleaved growth: the sequence's page ids are not consecutive
    growth = ([((seq_id, n), (other, 5)) for n in counts] if interleaved
              else [[(seq_id, n) for n in counts], [(other, 5)] * len(counts)])
    for rounds in growth:
        for target_seq, count in rounds:
            slots = cache.reserve([target_seq], [count])
            for layer in range(2):
                keys = torch.randn(count, 3, head_dim, generator=gen).to(dtype)
                cache.write(layer, keys, keys, slots)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    seq = Sequence(seq_id, num_tokens=length, collapsed_pages=collapsed_before,
                   collapsed_position=collapsed_before * page_size)
    cap = DistanceCap(max_distance=40, slack=1)
    pages = cache.pages(seq_id)
    assert (pages == list(range(pages[0], pages[0] + len(pages)))) != interleaved
    before = cache.k[:, pages].clone()  # [layers, pages, heads, P, d]
    other_keys = cache.k[:, cache.pages(other)].clone()
    assert cap_distances(cache, seq, inv_freq, cap)
    target = length - 40
    count = target // page_size
    assert (seq.collapsed_pages, seq.collapsed_position) == (count, target)
    current = torch.arange(count * page_size).view(count, 1, page_size)
    current = current.masked_fill(current < collapsed_before * page_size, collapsed_before * page_size)
    expected = rotate_keys(before[:, :count], target - current, inv_freq).to(dtype)
    assert_close(cache.k[:, pages[:count]].float(), expected.float(), dtype)
    assert torch.equal(cache.k[:, pages[count:]], before[:, count:])  # newer and partial pages untouched
    assert torch.equal(cache.k[:, cache.pages(other)], other_keys)
    for layer in range(2):
        stats = page_key_stats(cache.k[layer, pages[:count]], None)
        assert_close(cache.key_stats[layer, pages[:count]].float(), stats, dtype)
