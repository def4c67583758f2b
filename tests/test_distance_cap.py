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


def effective_positions(length: int, page_size: int, collapsed_pages: int, collapsed_position: int,
                        shift: int) -> torch.Tensor:
    """[length] the rotary position each token's key sits at: the collapsed pages' shared one, every
    later token its index, all less the cache's position shift."""
    index = torch.arange(length)
    own = torch.where(index < collapsed_pages * page_size, collapsed_position, index)
    return own - shift


def page_stats_of(engine, seq) -> tuple[torch.Tensor, torch.Tensor]:
    """The cache's statistics of every page of ``seq`` and the ones its keys give (partial last page
    over its filled slots): [layers, pages, heads, NUM_STATS, d] each."""
    pages, size = engine.cache.pages(seq.seq_id), engine.cache.page_size
    fill = torch.full((len(pages),), size)
    fill[-1] = seq.num_tokens - (len(pages) - 1) * size
    expected = torch.stack([page_key_stats(engine.cache.k[layer, pages], fill)
                            for layer in range(engine.cache.shape.num_layers)])
    return engine.cache.key_stats[:, pages].float(), expected


def test_old_pages_collapse_to_one_position_and_later_tokens_move_back(tiny_dir):
    engine = engine_for(tiny_dir, page_size=4)
    inv_freq, cache = engine.model.rotary.inv_freq, engine.cache
    cap = DistanceCap(max_distance=40, slack=10)
    seq = engine.new_sequence()
    engine.append(seq, token_ids=token_ids(50, seed=5))
    assert not engine.cap_distances(seq, cap)  # 50 <= 40 + 10: nothing to do

    engine.append(seq, token_ids=token_ids(50, seed=6))
    before = sequence_keys(engine, seq).clone()
    assert engine.cap_distances(seq, cap)
    # (100 - 40) // 4 pages at 100 - 40; the first collapse moves no later token
    assert (seq.collapsed_pages, seq.collapsed_position, cache.position_shift(seq.seq_id)) == (15, 60, 0)
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
    # the collapsed position advanced by 21: the pages collapsed before stay, everything later moves back
    assert (seq.collapsed_pages, seq.collapsed_position, cache.position_shift(seq.seq_id)) == (20, 81, 21)
    assert cache.next_position(seq.seq_id) == 100
    after = sequence_keys(engine, seq)
    assert torch.equal(after[:, :60], before[:, :60])
    was = effective_positions(121, 4, 15, 60, 0)
    now = effective_positions(121, 4, 20, 81, 21)
    expected = rotate_keys(before.transpose(1, 2), (now - was)[None, None, :], inv_freq).transpose(1, 2)
    assert_close(after, expected)
    assert_close(*page_stats_of(engine, seq))  # the partial last page's too

    # the sequence still decodes, and a rollback past the collapsed pages forgets them
    out = engine.generate(seq, SamplingParams(max_tokens=3))
    assert len(out) <= 3
    engine.truncate(seq, 30)
    assert seq.collapsed_pages == 7


def collapse_forward(engine, seq, cap: DistanceCap) -> None:
    """The distance ceiling as every collapse did it before the position shift (the reference): every
    collapsed key moved forward to the new collapsed position, later tokens left alone."""
    cache, size = engine.cache, engine.cache.page_size
    target = seq.num_tokens - cap.max_distance
    count = target // size
    pages = cache.pages(seq.seq_id, 0, count)
    own = effective_positions(count * size, size, seq.collapsed_pages, seq.collapsed_position, 0)
    for layer in range(cache.shape.num_layers):
        keys = cache.k[layer, pages]  # [pages, heads, P, d]
        moved = rotate_keys(keys, (target - own).view(count, 1, size), engine.model.rotary.inv_freq)
        cache.k[layer, pages] = moved.to(cache.k.dtype)
        cache.key_stats[layer, pages] = page_key_stats(moved, None).to(cache.key_stats.dtype)
    seq.collapsed_pages, seq.collapsed_position = count, target


def test_shifted_positions_give_the_logits_of_moving_collapsed_keys_forward(tiny_dir):
    """Dense attention over a context collapsed three times: each prefill's last logits and a greedy
    decode match the reference that moves every collapsed key forward and keeps positions unshifted."""
    cap = DistanceCap(max_distance=40, slack=10)
    engines = [engine_for(tiny_dir, page_size=4) for _ in range(2)]
    seqs = [engine.new_sequence() for engine in engines]
    for round_index, count in enumerate([60, 23, 17, 31, 9]):
        ids = token_ids(count, seed=20 + round_index)
        collapsed = [engines[0].cap_distances(seqs[0], cap)]
        if seqs[1].num_tokens - (seqs[1].collapsed_position if seqs[1].collapsed_pages else 0) > 50:
            collapse_forward(engines[1], seqs[1], cap)
            collapsed.append(True)
        else:
            collapsed.append(False)
        assert collapsed[0] == collapsed[1]
        for engine, seq in zip(engines, seqs):
            engine.append(seq, token_ids=ids)
        assert_close(seqs[0].next_logits, seqs[1].next_logits)
    assert engines[0].cache.position_shift(seqs[0].seq_id) > 0
    greedy = SamplingParams(max_tokens=5)
    assert engines[0].generate(seqs[0], greedy) == engines[1].generate(seqs[1], greedy)


def test_invalid_cap_is_refused():
    with pytest.raises(ValueError):
        DistanceCap(max_distance=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("run_pages", [1, 3, 64], ids=["run1", "run3", "run64"])
@pytest.mark.parametrize("collapsed_before", [0, 5, 11], ids=["first", "mid-run", "run-edge"])
@pytest.mark.parametrize("interleaved", [True, False], ids=["scattered", "consecutive"])
def test_collapse_in_runs_equals_rotating_every_key_from_its_position(dtype, run_pages, collapsed_before,
                                                                      interleaved, monkeypatch):
    """The run-wise collapse (per-token rotations for the newly collapsed pages, one shared rotation back
    for every later token) against every key rotated from its position before to its position after and
    its page's statistics recomputed: scattered pages (two sequences interleaved, keys gathered and
    written back) or consecutive ones (float32 keys moved in place), three kv heads, a partial last page
    (statistics over its filled slots), runs that straddle the collapsed/later boundary, the pages
    collapsed before left as they were."""
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
    back = target - collapsed_before * page_size if collapsed_before else 0
    assert (seq.collapsed_pages, seq.collapsed_position) == (count, target)
    assert cache.position_shift(seq_id) == back and cache.next_position(seq_id) == length - back
    slots = len(pages) * page_size  # every slot, the partial last page's unwritten ones too
    index = torch.arange(slots)
    was = torch.where(index < collapsed_before * page_size, collapsed_before * page_size, index)
    now = torch.where(index < count * page_size, target, index) - back
    expected = rotate_keys(before, (now - was).view(len(pages), 1, page_size), inv_freq).to(dtype)
    if not back:  # the first collapse moves no later token
        expected[:, count:] = before[:, count:]
    assert_close(cache.k[:, pages].float(), expected.float(), dtype)
    assert torch.equal(cache.k[:, pages[:collapsed_before]], before[:, :collapsed_before])  # stay put
    assert torch.equal(cache.k[:, cache.pages(other)], other_keys)
    fill = torch.full((len(pages),), page_size)
    fill[-1] = length - (len(pages) - 1) * page_size
    for layer in range(2):
        stats = page_key_stats(cache.k[layer, pages], fill)
        assert_close(cache.key_stats[layer, pages].float(), stats, dtype)
