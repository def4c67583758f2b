"""Page scoring, the top-k selection kernel, and scoring with selection in one launch (the engine's
step) against their references. Selections are compared by chosen set size, forced pages and
summed scores (ties may differ); physical page ids by the page table."""

import pytest
import torch

from asr.attention.config import UniqueConfig
from asr.attention.kernels.scoring import score_pages_triton, score_select_triton
from asr.attention.kernels.selection import select_pages_triton
from asr.attention.scoring import score_pages_reference
from asr.attention.selection import select_pages_reference
from tests.paged_batch import make_paged_batch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = [
    pytest.param(UniqueConfig(method="unique", offset="gauss", budget_tokens=128), id="gauss"),
    pytest.param(UniqueConfig(method="unique", offset="l1", lam=0.5, budget_tokens=128), id="l1"),
    pytest.param(UniqueConfig(method="quest", budget_tokens=128), id="quest"),
    pytest.param(UniqueConfig(method="mean", budget_tokens=128), id="mean"),
]
GQA = [pytest.param((4, 4), id="mha"), pytest.param((8, 2), id="gqa4"), pytest.param((16, 2), id="gqa8"),
       pytest.param((9, 3), id="gqa3-smollm2")]  # three kv heads: not a power of two
DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def check_physical(chosen_physical, chosen, page_table):
    """Physical ids are the page table's entries of the chosen pages, -1 where none."""
    chosen, page_table = chosen.long().cpu(), page_table.long().cpu()
    expected = (
        page_table.gather(1, chosen.clamp(min=0).flatten(1)).view(chosen.shape).masked_fill(chosen < 0, -1)
    )
    assert torch.equal(chosen_physical.long().cpu(), expected)


def identity_table(batch, max_pages):
    return torch.arange(max_pages, dtype=torch.int32, device=DEVICE).expand(batch, -1)


def check_selection(chosen, scores, seq_lens, config):
    """Same count, ascending, forced pages in, -1 padding, and the reference's summed score."""
    expected = select_pages_reference(scores, seq_lens, config)
    assert chosen.shape == expected.shape and chosen.dtype == torch.int32
    chosen, expected, scores = chosen.cpu(), expected.cpu(), scores.cpu()
    assert torch.equal(chosen < 0, expected < 0), "different number of chosen pages"
    for row in range(chosen.shape[0]):
        num_pages = -(-int(seq_lens[row]) // config.page_size)
        forced = set(range(min(config.sink_pages, num_pages))) | set(
            range(max(0, num_pages - config.local_pages), num_pages)
        )
        for head in range(chosen.shape[1]):
            got = [p for p in chosen[row, head].tolist() if p >= 0]
            ref = [p for p in expected[row, head].tolist() if p >= 0]
            assert got == sorted(set(got)) and all(p < num_pages for p in got)
            assert forced <= set(got)
            rest_got = [p for p in got if p not in forced]
            rest_ref = [p for p in ref if p not in forced]
            total_got = float(scores[row, head, rest_got].double().sum())
            total_ref = float(scores[row, head, rest_ref].double().sum())
            assert total_got == pytest.approx(total_ref, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scores_match_reference(config, heads, dtype):
    batch = make_paged_batch([300, 16, 1, 77], *heads, 64, config.page_size, dtype, seed=20, device=DEVICE)
    expected = score_pages_reference(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    scores = score_pages_triton(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("heads", [pytest.param((16, 2), id="gqa8"), pytest.param((9, 3), id="gqa3-smollm2")])
def test_scores_with_one_head_or_all_heads_per_program(split, heads, monkeypatch):
    """Both grids of the scorer (one kv head per program, or all of them) whatever the batch."""
    from asr.attention.kernels import scoring

    monkeypatch.setattr(scoring, "SPLIT_HEADS_MAX_ROWS_PER_SM", 1e9 if split else 0.0)
    config = UniqueConfig(method="unique", offset="gauss", budget_tokens=128)
    batch = make_paged_batch(
        [300, 16, 1, 77], *heads, 64, config.page_size, torch.bfloat16, seed=21, device=DEVICE
    )
    expected = score_pages_reference(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    scores = score_pages_triton(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("budget_pages", [4, 8, 64])
@pytest.mark.parametrize("max_pages", [5, 100, 1000])
def test_selection_matches_reference(budget_pages, max_pages):
    config = UniqueConfig(page_size=16, budget_tokens=16 * budget_pages)
    gen = torch.Generator().manual_seed(budget_pages * 1000 + max_pages)
    seq_lens = torch.tensor([max_pages * 16, 1, max_pages * 8 + 3, 17 * 16], dtype=torch.int32).clamp(
        max=max_pages * 16
    )
    scores = torch.randn(4, 3, max_pages, generator=gen) * 10
    num_pages = (seq_lens + 15) // 16
    scores = scores.masked_fill(
        torch.arange(max_pages)[None, None] >= num_pages[:, None, None], float("-inf")
    )
    poisoned = torch.full((4, 3, config.num_select), -7, dtype=torch.int32, device=DEVICE)
    page_table = torch.randperm(4 * max_pages, generator=gen).to(torch.int32).view(4, max_pages).to(DEVICE)
    chosen, physical = select_pages_triton(
        scores.to(DEVICE), seq_lens.to(DEVICE), page_table, 16, config.num_select, 1, 2, out=poisoned
    )
    assert chosen is poisoned and (chosen >= -1).all(), "unwritten chosen slots"
    check_selection(chosen, scores, seq_lens, config)
    check_physical(physical, chosen, page_table)


def test_selection_breaks_ties():
    """Many equal scores: the kernel must still take exactly the budget."""
    config = UniqueConfig(page_size=16, budget_tokens=16 * 10)
    gen = torch.Generator().manual_seed(21)
    scores = torch.randint(0, 3, (2, 2, 300), generator=gen).float()
    seq_lens = torch.tensor([300 * 16, 200 * 16 - 5], dtype=torch.int32)
    scores[1, :, 200:] = float("-inf")
    chosen, _ = select_pages_triton(scores.to(DEVICE), seq_lens.to(DEVICE), identity_table(2, 300), 16,
                                    config.num_select, 1, 2)
    check_selection(chosen, scores, seq_lens, config)


def score_then_select(batch, config):
    """The scoring kernel, then the top-k kernel on its scores: (scores, chosen, physical)."""
    scores = score_pages_triton(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    chosen, physical = select_pages_triton(scores, batch.seq_lens, batch.page_table, config.page_size,
                                           config.num_select, config.sink_pages, config.local_pages)
    return scores, chosen, physical


def in_page_order(scores, chosen, physical):
    order = chosen.long().masked_fill(chosen < 0, 2**40).argsort(dim=-1)
    return scores, chosen.gather(-1, order), physical.gather(-1, order)


def score_select(batch, config):
    """Scoring with selection in one launch, whatever the heads per program; chosen pages (and
    their ids) put in ascending order."""
    from asr.attention.kernels import scoring

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scoring, "FUSED_SELECT_MAX_HEADS", 1 << 20)
        return in_page_order(
            *score_select_triton(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
        )


STEPS = [pytest.param(score_then_select, id="two-kernels"), pytest.param(score_select, id="one-kernel")]


def check_score_and_select(batch, config, step, atol=1e-4):
    scores, chosen, physical = step(batch, config)
    args = (batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    torch.testing.assert_close(scores, score_pages_reference(*args), rtol=1e-4, atol=atol)
    check_selection(chosen, scores, batch.seq_lens, config)
    check_physical(physical, chosen, batch.page_table)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("config", CONFIGS)
def test_scored_selection_as_reference(config, step):
    batch = make_paged_batch(
        [2000, 16, 1, 700], 8, 2, 64, config.page_size, torch.bfloat16, seed=22, device=DEVICE
    )
    check_score_and_select(batch, config, step)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("budget_pages", [3, 8, 64])
def test_scored_selection_on_long_ragged_rows(budget_pages, step):
    """Rows longer and shorter than the budget."""
    config = UniqueConfig(page_size=16, budget_tokens=16 * budget_pages)
    batch = make_paged_batch([9000, 2100, 40, 5000], 8, 2, 64, 16, torch.bfloat16, seed=24, device=DEVICE)
    check_score_and_select(batch, config, step)


@pytest.mark.parametrize("step", STEPS)
def test_scored_selection_breaks_ties(step):
    """Pages share three distinct statistics, so many scores tie."""
    config = UniqueConfig(page_size=16, budget_tokens=16 * 20)
    batch = make_paged_batch([9000, 3000], 8, 2, 64, 16, torch.bfloat16, seed=25, device=DEVICE)
    gen = torch.Generator().manual_seed(25)
    pool = batch.key_stats[:3].clone()
    batch.key_stats.copy_(pool[torch.randint(0, 3, (batch.key_stats.shape[0],), generator=gen).to(DEVICE)])
    check_score_and_select(batch, config, step)


@pytest.mark.parametrize("split", [True, False], ids=["one-head", "all-heads"])
@pytest.mark.parametrize("candidates", [2, 8])
@pytest.mark.parametrize("heads", [pytest.param((8, 2), id="gqa4"), pytest.param((9, 3), id="gqa3-smollm2")])
def test_one_kernel_selection_merges_clustered_rows(split, candidates, heads, monkeypatch):
    """The best pages sit together (keys grow with position, as recent context often scores), so
    a program holds more of the top-k than it keeps as candidates: the merge must take in the rest
    of its pages. Few candidates per program force that path everywhere."""
    from asr.attention.kernels import scoring

    monkeypatch.setattr(scoring, "SPLIT_HEADS_MAX_ROWS_PER_SM", 1e9 if split else 0.0)
    monkeypatch.setattr(scoring, "CANDIDATES_PER_PROGRAM", candidates)
    config = UniqueConfig(page_size=16, budget_tokens=16 * 24)
    batch = make_paged_batch([7000, 2500, 300], *heads, 64, 16, torch.bfloat16, seed=26, device=DEVICE)
    # the mean of logical page p moves p / 100 along the sign of its head's summed query
    kv_heads = heads[1]
    for row in range(batch.page_table.shape[0]):
        pages = batch.page_table[row, : -(-int(batch.seq_lens[row]) // 16)].long()
        position = torch.arange(len(pages), device=DEVICE, dtype=torch.float32) / 100
        direction = batch.q[row].float().view(kv_heads, -1, 64).sum(1).sign()  # [kv_heads, d]
        drift = position[:, None, None] * direction[None]
        means = batch.key_stats[pages, :, 0].float() + drift
        batch.key_stats[pages, :, 0] = means.to(batch.key_stats.dtype)
    check_score_and_select(batch, config, score_select)


@pytest.mark.parametrize("lens, heads", [pytest.param([3000], (4, 1), id="one-head-fused"),
                                         pytest.param([3000, 900, 20], (8, 2), id="all-heads-two-kernels")])
def test_step_selection_as_reference(lens, heads):
    """``score_select_triton`` as the engine calls it: one launch while a program scores one kv
    head, the scoring and top-k kernels otherwise; either way the reference's selection."""
    config = UniqueConfig(page_size=16, budget_tokens=16 * 12)
    batch = make_paged_batch(lens, *heads, 64, 16, torch.bfloat16, seed=28, device=DEVICE)
    check_score_and_select(batch, config, lambda b, c: in_page_order(
        *score_select_triton(b.q, b.key_stats, b.page_table, b.seq_lens, c)))


def test_one_kernel_selection_leaves_counters_reset():
    """The row counters persist between launches (and graph replays): a second launch with other
    queries selects exactly again."""
    config = UniqueConfig(page_size=16, budget_tokens=16 * 8)
    batch = make_paged_batch([5000, 800], 8, 2, 64, 16, torch.bfloat16, seed=27, device=DEVICE)
    for seed in range(2):
        batch.q.copy_(torch.randn(batch.q.shape, generator=torch.Generator().manual_seed(seed)).to(batch.q))
        check_score_and_select(batch, config, score_select)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("page_size", [16, 32, 64])
@pytest.mark.parametrize("step", STEPS)
def test_real_size_score_select(page_size, step):
    config = UniqueConfig(page_size=page_size, budget_tokens=2048)
    batch = make_paged_batch(
        [131072, 40000, 3000], 32, 8, 128, page_size, torch.bfloat16, seed=23, device=DEVICE
    )
    check_score_and_select(batch, config, step, atol=1e-3)
