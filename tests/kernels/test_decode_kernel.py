"""Split paged decode kernel against ``paged_decode_reference`` (fp32 reference on the same
bf16/fp16 values), dense and sparse, ragged batches, NaN-poisoned slack and outputs."""

import math

import pytest
import torch

from asr.attention.config import UniqueConfig
from asr.attention.decode import paged_decode_reference
from asr.attention.kernels.decode import paged_decode_triton
from asr.attention.kernels.scoring import score_select_triton
from asr.attention.scoring import score_pages_reference
from asr.attention.selection import select_pages_reference
from tests.paged_batch import make_paged_batch
from tests.tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# every dtype x head dim x page size at GQA 4, and the other GQA ratios at one geometry
SHAPES = [pytest.param(dtype, d, page, (8, 2), id=f"{name}-d{d}-P{page}-gqa4")
          for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"))
          for d in (64, 128) for page in (16, 32, 64)]
SHAPES += [pytest.param(torch.bfloat16, 128, 32, heads, id=f"bf16-d128-P32-{name}")
           for heads, name in (((4, 4), "mha"), ((16, 2), "gqa8"), ((32, 8), "gqa4x8"))]
SHAPES += [pytest.param(torch.bfloat16, 64, 16, (9, 3), id="bf16-d64-P16-gqa3-smollm2")]  # three kv heads


def reference(batch, scale, chosen=None):
    """fp32 reference on the kernel's own (rounded) inputs."""
    return paged_decode_reference(
        batch.q.float(),
        batch.k_cache.float(),
        batch.v_cache.float(),
        batch.page_table,
        batch.seq_lens,
        scale,
        chosen,
    )


def physical_ids(chosen, page_table):
    """The chosen logical pages' ids in the page table, -1 where none (as the fused selector gives them)."""
    gathered = page_table.long().gather(1, chosen.long().clamp(min=0).flatten(1)).view(chosen.shape)
    return gathered.masked_fill(chosen < 0, -1).to(torch.int32)


def run_kernel(batch, scale, chosen=None, num_splits=None, chosen_physical=None):
    out = torch.full_like(batch.q, float("nan"))
    lse = torch.full(batch.q.shape[:2], float("nan"), device=batch.q.device)
    return paged_decode_triton(batch.q, batch.k_cache, batch.v_cache, batch.page_table, batch.seq_lens, scale,
                               chosen, chosen_physical, num_splits=num_splits, out=out, lse=lse)


def check(batch, scale, chosen=None, num_splits=None, chosen_physical=None):
    out, lse = run_kernel(batch, scale, chosen, num_splits, chosen_physical)
    ref_out, ref_lse = reference(batch, scale, chosen)
    assert_close(out.float(), ref_out, batch.q.dtype)
    assert_close(lse, ref_lse, torch.float16)  # fp32 logits of the same operands; loose for GPU dot order


@pytest.mark.parametrize("dtype, head_dim, page_size, heads", SHAPES)
def test_dense_decode_matches_reference(dtype, head_dim, page_size, heads):
    batch = make_paged_batch([1, 63, 200], *heads, head_dim, page_size, dtype, seed=10, device=DEVICE)
    check(batch, 1 / math.sqrt(head_dim))


@pytest.mark.parametrize("dtype, head_dim, page_size, heads", SHAPES)
def test_sparse_decode_matches_reference(dtype, head_dim, page_size, heads):
    batch = make_paged_batch([500, 37, 260], *heads, head_dim, page_size, dtype, seed=11, device=DEVICE)
    config = UniqueConfig(page_size=page_size, budget_tokens=4 * page_size)
    scores = score_pages_reference(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    chosen = select_pages_reference(scores, batch.seq_lens, config)  # -1 padded for the short sequence
    check(batch, 1 / math.sqrt(head_dim), chosen, chosen_physical=physical_ids(chosen, batch.page_table))


def unique_step(q, batch, page_table, seq_lens, scale, config, out=None, lse=None):
    """The engine's UNIQUE step on CUDA: the scoring kernel that selects, then decode over the
    chosen pages (given their physical ids). Returns (out, lse, chosen, scores)."""
    scores, chosen, physical = score_select_triton(q, batch.key_stats, page_table, seq_lens, config)
    out, lse = paged_decode_triton(
        q, batch.k_cache, batch.v_cache, page_table, seq_lens, scale, chosen, physical, out=out, lse=lse
    )
    return out, lse, chosen, scores


@pytest.mark.parametrize("dtype, head_dim, page_size, heads", SHAPES)
def test_scored_selected_decode_matches_reference(dtype, head_dim, page_size, heads):
    """Scoring with selection, then decode: the output is the reference's over the pages chosen."""
    batch = make_paged_batch([500, 37, 260], *heads, head_dim, page_size, dtype, seed=15, device=DEVICE)
    config = UniqueConfig(page_size=page_size, budget_tokens=4 * page_size)
    out = torch.full_like(batch.q, float("nan"))
    lse = torch.full(batch.q.shape[:2], float("nan"), device=batch.q.device)
    out, lse, chosen, scores = unique_step(
        batch.q, batch, batch.page_table, batch.seq_lens, 1 / math.sqrt(head_dim), config, out, lse
    )
    expected = select_pages_reference(scores, batch.seq_lens, config)
    assert torch.equal(chosen < 0, expected < 0)
    ref_out, ref_lse = reference(batch, 1 / math.sqrt(head_dim), chosen)
    assert_close(out.float(), ref_out, dtype)
    assert_close(lse, ref_lse, torch.float16)


def test_unique_step_ignores_table_width_and_padded_rows():
    """As a graph bucket runs it (page table as wide as the longest context, a padded row of one
    token on a scratch page) the real rows get what an exact-width batch gets."""
    batch = make_paged_batch([5, 70, 33], 4, 2, 64, 16, torch.bfloat16, seed=16, device=DEVICE)
    config = UniqueConfig(page_size=16, budget_tokens=32, sink_pages=1, local_pages=1)
    scratch_page = int(batch.page_table[1, 0])  # any page: the padded row's token is never compared
    wide = torch.full((4, 16), scratch_page, dtype=torch.int32, device=DEVICE)
    wide[:3, : batch.page_table.shape[1]] = batch.page_table
    seq_lens = torch.cat([batch.seq_lens, torch.ones(1, dtype=torch.int32, device=DEVICE)])
    q = torch.cat([batch.q, batch.q[:1]])
    out, lse, chosen, _ = unique_step(batch.q, batch, batch.page_table, batch.seq_lens, 0.125, config)
    wide_out, wide_lse, wide_chosen, _ = unique_step(q, batch, wide, seq_lens, 0.125, config)
    assert torch.equal(wide_chosen[:3], chosen)
    assert_close(wide_out[:3], out)
    assert_close(wide_lse[:3], lse, torch.float16)


@pytest.mark.parametrize("num_splits", [1, 2, 5, 64])
def test_split_count_does_not_change_result(num_splits):
    batch = make_paged_batch([1000, 1, 129], 8, 2, 64, 16, torch.bfloat16, seed=12, device=DEVICE)
    check(batch, 0.125, num_splits=num_splits)


def test_full_budget_sparse_equals_dense():
    batch = make_paged_batch([700, 3, 255], 8, 2, 64, 16, torch.bfloat16, seed=13, device=DEVICE)
    config = UniqueConfig(page_size=16, budget_tokens=16 * 64)
    scores = score_pages_reference(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
    chosen = select_pages_reference(scores, batch.seq_lens, config)
    sparse_out, sparse_lse = run_kernel(batch, 0.125, chosen)
    dense_out, dense_lse = run_kernel(batch, 0.125)
    assert_close(sparse_out, dense_out)
    assert_close(sparse_lse, dense_lse, torch.float16)


def test_rejects_unsupported_inputs():
    batch = make_paged_batch([40], 4, 4, 64, 16, torch.bfloat16, device=DEVICE)
    with pytest.raises(TypeError):
        paged_decode_triton(
            batch.q, batch.k_cache, batch.v_cache, batch.page_table.long(), batch.seq_lens, 0.1
        )
    with pytest.raises(ValueError):
        paged_decode_triton(batch.q, batch.k_cache.transpose(2, 3), batch.v_cache, batch.page_table,
                            batch.seq_lens, 0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("page_size", [16, 32])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_real_size_decode(page_size, sparse):
    batch = make_paged_batch(
        [32768, 5000, 17, 20001], 32, 8, 128, page_size, torch.bfloat16, seed=14, device=DEVICE
    )
    chosen = None
    if sparse:
        config = UniqueConfig(page_size=page_size, budget_tokens=2048)
        scores = score_pages_reference(batch.q, batch.key_stats, batch.page_table, batch.seq_lens, config)
        chosen = select_pages_reference(scores, batch.seq_lens, config)
    check(batch, 1 / math.sqrt(128), chosen, chosen_physical=None if chosen is None else
          physical_ids(chosen, batch.page_table))
