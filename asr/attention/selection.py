"""Top-k page selection under a token budget, with sink and local pages forced in."""

from __future__ import annotations

import torch

from asr.attention.config import UniqueConfig

MAX_KERNEL_PAGES = 16384  # the selection kernels hold a row of page scores in registers


def force_sink_and_local(scores: torch.Tensor, seq_lens: torch.Tensor, config: UniqueConfig) -> torch.Tensor:
    """Raise the scores of sink and local pages to +inf so top-k always takes them.

    scores: [batch, kv_heads, max_pages] (``-inf`` past each sequence's end); seq_lens: [batch].
    """
    max_pages = scores.shape[-1]
    num_pages = (seq_lens.long() + config.page_size - 1) // config.page_size
    page_idx = torch.arange(max_pages, device=scores.device)[None, :]
    forced = (page_idx < config.sink_pages) | (page_idx >= num_pages[:, None] - config.local_pages)
    forced &= page_idx < num_pages[:, None]
    return scores.masked_fill(forced[:, None, :], float("inf"))


def select_pages_reference(
    scores: torch.Tensor, seq_lens: torch.Tensor, config: UniqueConfig
) -> torch.Tensor:
    """Choose ``config.num_select`` pages per sequence and kv head.

    scores: [batch, kv_heads, max_pages] float32, ``-inf`` past each sequence's end.
    Returns chosen_pages: [batch, kv_heads, num_select] int32 logical page indices in ascending
    order, padded with -1 where a sequence has fewer pages than the budget (then every page is
    chosen: a context that fits the budget is attended densely).
    """
    batch, kv_heads, max_pages = scores.shape
    num_select = config.num_select
    forced = force_sink_and_local(scores, seq_lens, config)
    if max_pages < num_select:
        pad = forced.new_full((batch, kv_heads, num_select - max_pages), float("-inf"))
        forced = torch.cat([forced, pad], dim=-1)
    top_scores, top_idx = forced.topk(num_select, dim=-1)
    chosen = top_idx.masked_fill(top_scores == float("-inf"), -1)
    # ascending page order, padding last
    padding = torch.iinfo(torch.int64).max
    ordered = chosen.masked_fill(chosen < 0, padding).sort(dim=-1).values
    return ordered.masked_fill(ordered == padding, -1).to(torch.int32)


def select_pages(scores: torch.Tensor, seq_lens: torch.Tensor, config: UniqueConfig) -> torch.Tensor:
    """Public selection (arguments as ``select_pages_reference``): kernel on CUDA, reference elsewhere."""
    if scores.is_cuda and scores.shape[-1] <= MAX_KERNEL_PAGES:
        from asr.attention.kernels.selection import select_pages_triton

        page_table = torch.arange(scores.shape[-1], dtype=torch.int32, device=scores.device).expand(
            scores.shape[0], -1
        )
        return select_pages_triton(scores, seq_lens, page_table, config.page_size, config.num_select,
                                   config.sink_pages, config.local_pages)[0]
    return select_pages_reference(scores, seq_lens, config)
