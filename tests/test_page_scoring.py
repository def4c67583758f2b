import math

import pytest
import torch

from asr.attention.config import UniqueConfig
from asr.attention.cpu import score_pages_cpu
from asr.attention.scoring import oracle_page_mass, score_from_stats, score_pages_reference
from asr.attention.selection import select_pages_reference
from tests.paged_batch import make_paged_batch

GQA = [pytest.param((4, 4), id="mha"), pytest.param((8, 2), id="gqa4"), pytest.param((16, 2), id="gqa8")]


def naive_page_score(q_group, page_keys, config):
    """q_group: [group, d] float64, page_keys: [n, d] float64 -> scalar score, summed over the group."""
    d = q_group.shape[1]
    mean, std = page_keys.mean(0), page_keys.std(0, unbiased=False)
    kmin, kmax = page_keys.amin(0), page_keys.amax(0)
    total = 0.0
    for q in q_group:
        if config.method == "quest":
            total += torch.maximum(q * kmin, q * kmax).sum()
        elif config.method == "mean":
            total += q @ mean
        elif config.offset == "l1":
            total += q @ mean + config.lam * (q.abs() @ std)
        else:
            total += q @ mean + config.lam * (q.square() @ std.square()) / (2 * math.sqrt(d))
    return float(total)


CONFIGS = [
    pytest.param(UniqueConfig(method="unique", offset="gauss"), id="gauss"),
    pytest.param(UniqueConfig(method="unique", offset="l1", lam=0.5), id="l1"),
    pytest.param(UniqueConfig(method="quest"), id="quest"),
    pytest.param(UniqueConfig(method="mean"), id="mean"),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("heads", GQA)
def test_scores_match_naive_per_page_computation(config, heads):
    lengths = [50, 16, 1]
    batch = make_paged_batch(lengths, *heads, 32, config.page_size, torch.float32, seed=3)
    scores = score_pages_reference(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    group = heads[0] // heads[1]
    for row, n in enumerate(lengths):
        pages = -(-n // config.page_size)
        assert torch.isinf(scores[row, :, pages:]).all() and (scores[row, :, pages:] < 0).all()
        for h in range(heads[1]):
            q_group = batch.q[row, h * group : (h + 1) * group].double()
            for p in range(pages):
                keys = batch.keys[row][p * config.page_size : (p + 1) * config.page_size, h].double()
                assert scores[row, h, p].item() == pytest.approx(
                    naive_page_score(q_group, keys, config), rel=1e-4, abs=1e-3
                )


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("consecutive", [False, True], ids=["scattered", "consecutive"])
def test_cpu_path_matches_the_reference(config, dtype, consecutive):
    lengths = [50, 16, 1, 33]
    batch = make_paged_batch(lengths, 9, 3, 64, config.page_size, dtype, seed=5)
    table = batch.page_table
    if consecutive:  # each sequence's pages in one run, as the allocator gives a lone sequence
        starts = [0, 4, 5, 6]  # rows of 4, 1, 1 and 3 pages; the table's 4 columns stay in the 12-page pool
        table = torch.stack([torch.arange(start, start + table.shape[1]) for start in starts]).to(table.dtype)
    expected = score_pages_reference(batch.q, batch.key_stats, table, batch.seq_lens, config)
    got = score_pages_cpu(batch.q, batch.key_stats, table, batch.seq_lens, config)
    assert got.shape == expected.shape
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-4, atol=1e-4)


def test_gauss_offset_is_log_expected_exp_logit_for_gaussian_keys():
    """For Gaussian keys, score/sqrt(d) ~ log E[exp(q.k/sqrt(d))]; the mean alone underestimates it."""
    gen = torch.Generator().manual_seed(4)
    d, n = 64, 200_000
    q = torch.randn(d, generator=gen, dtype=torch.float64)
    mu, sigma = (
        torch.randn(d, generator=gen, dtype=torch.float64) * 0.3,
        torch.rand(d, generator=gen, dtype=torch.float64) * 0.5,
    )
    keys = mu + sigma * torch.randn(n, d, generator=gen, dtype=torch.float64)
    empirical = torch.logsumexp(keys @ q / math.sqrt(d), 0) - math.log(n)
    stats = torch.stack([mu, sigma, mu, mu])[None, None, None]  # [1, 1, 1, 4, d]
    gauss = score_from_stats(q[None, None, None], stats, "unique", "gauss")[0, 0, 0, 0] / math.sqrt(d)
    mean_only = score_from_stats(q[None, None, None], stats, "mean")[0, 0, 0, 0] / math.sqrt(d)
    assert abs(gauss - empirical) < 0.02
    assert abs(mean_only - empirical) > 5 * abs(gauss - empirical)


@pytest.mark.parametrize("heads", GQA)
def test_oracle_mass_is_the_softmax_mass_per_page(heads):
    lengths = [70, 5]
    batch = make_paged_batch(lengths, *heads, 16, 16, torch.float32, seed=5)
    mass = oracle_page_mass(batch.q, batch.k_cache, batch.page_table, batch.seq_lens)
    group = heads[0] // heads[1]
    torch.testing.assert_close(mass.sum(-1), torch.full(mass.shape[:2], float(group)))
    row, h = 0, heads[1] - 1
    logits = torch.einsum("gd,td->gt", batch.q[row, h * group : (h + 1) * group], batch.keys[row][:, h]) / 4.0
    probs = logits.softmax(-1)
    expected = torch.stack([probs[:, p * 16 : (p + 1) * 16].sum() for p in range(5)])
    torch.testing.assert_close(mass[row, h, :5], expected)


@pytest.mark.parametrize("page_size", [16, 64])
def test_selection_forces_sink_and_local_and_takes_the_best_of_the_rest(page_size):
    gen = torch.Generator().manual_seed(6)
    config = UniqueConfig(page_size=page_size, budget_tokens=8 * page_size, sink_pages=1, local_pages=2)
    seq_lens = torch.tensor([40 * page_size - 3, 5 * page_size, 1, 9 * page_size])
    max_pages = 40
    scores = torch.randn(4, 3, max_pages, generator=gen)
    num_pages = (seq_lens + page_size - 1) // page_size
    scores = scores.masked_fill(
        torch.arange(max_pages)[None, None] >= num_pages[:, None, None], float("-inf")
    )
    chosen = select_pages_reference(scores, seq_lens.int(), config)
    assert chosen.shape == (4, 3, 8)
    for b in range(4):
        n = int(num_pages[b])
        for h in range(3):
            picked = [p for p in chosen[b, h].tolist() if p >= 0]
            assert picked == sorted(picked)
            if n <= 8:
                assert picked == list(range(n)), "a context within budget is attended densely"
                continue
            forced = {0, n - 2, n - 1}
            assert forced <= set(picked) and len(picked) == 8
            rest = [p for p in range(1, n - 2)]
            best = sorted(rest, key=lambda p: -scores[b, h, p].item())[:5]
            assert set(picked) - forced == set(best)
