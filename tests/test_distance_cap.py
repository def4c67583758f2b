"""The distance ceiling for long contexts: keys move to the collapsed position exactly, stats follow."""

from __future__ import annotations

import pytest
import torch

from asr.attention.append import page_key_stats
from asr.llm.config import SamplingParams
from asr.llm.distance_cap import DistanceCap, rotate_keys
from asr.llm.layers import apply_rotary
from asr.llm.model import RotaryEmbedding
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
    expected = rotate_keys(before[:, :60].transpose(1, 2), (60 - own)[None, None, :], inv_freq).transpose(1, 2)
    assert_close(after[:, :60], expected)
    assert torch.equal(after[:, 60:], before[:, 60:])  # newer tokens keep their own positions

    engine.append(seq, token_ids=token_ids(21, seed=7))  # 121 - 60 > 50: collapse again, to 81
    before = sequence_keys(engine, seq).clone()
    assert engine.cap_distances(seq, cap)
    assert (seq.collapsed_pages, seq.collapsed_position) == (20, 81)
    after = sequence_keys(engine, seq)
    current = torch.cat([torch.full((60,), 60), torch.arange(60, 80)])
    expected = rotate_keys(before[:, :80].transpose(1, 2), (81 - current)[None, None, :], inv_freq).transpose(1, 2)
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
