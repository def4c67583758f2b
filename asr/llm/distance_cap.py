"""A ceiling on query-key distances for contexts longer than the model was trained on.

Rotary attention depends only on the distance between a query's and a key's positions. A model that
never saw distances past its training context (SmolLM2-135M: 8k tokens; the speech adapter: a few
thousand) degrades over an hour of audio (~55k tokens). As in LM-Infinite's distance ceiling, old keys
are moved closer, page by page: once the oldest key still at its own position lies more than
``max_distance + slack`` behind the next position ``n``, every whole page behind ``n - max_distance`` is
re-rotated to that one position (``Sequence.collapsed_position``) and its key statistics are recomputed:
the pages collapsed before move by one shared distance, the new ones each token from its own position,
in runs of pages that stay in the CPU cache from rotation to statistics. The keys stay in the cache and
are still found by content (dense attention, or the top-k page choice); they only lose their order among
themselves. New tokens keep their own positions, so the runner, the kernels and the CUDA graphs are
untouched; the work is one pass over the collapsed keys every ``slack`` tokens (it still grows with the
context: every collapsed key must move once per ``slack`` tokens while the kernels read keys as stored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asr.attention.paged_cache import PagedKVCache
from asr.llm.layers import apply_rotary
from asr.llm.sequence import Sequence


@dataclass(frozen=True)
class DistanceCap:
    """Keys stay within ``max_distance + slack`` (+ one page) of the next position; collapsing
    happens at most once per ``slack`` new tokens."""

    max_distance: int = 4096
    slack: int = 1024

    def __post_init__(self) -> None:
        if self.max_distance < 1 or self.slack < 1:
            raise ValueError(
                f"max_distance and slack must be positive, got {self.max_distance}, {self.slack}"
            )


def key_rotation(delta: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, signed_sin [..., tokens, head_dim] float32 that move rotary-embedded keys by ``delta``
    ([..., tokens] int) positions (rotate-half convention; inv_freq: [head_dim // 2])."""
    angles = delta[..., None].float() * inv_freq.float()  # [..., tokens, head_dim // 2]
    return torch.cat((angles.cos(), angles.cos()), -1), torch.cat((-angles.sin(), angles.sin()), -1)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Move rotary-embedded keys by ``delta`` positions (rotate-half convention, no attention scaling:
    the keys already carry it). keys: [..., tokens, head_dim]; delta: [..., tokens] int (broadcast
    against keys' leading dims); inv_freq: [head_dim // 2]. Returns float32 [..., tokens, head_dim]."""
    return apply_rotary(keys.float(), *key_rotation(delta, inv_freq))


def rotate_in_place(keys: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> None:
    """``keys = apply_rotary(keys, cos, signed_sin)`` without a rotated copy or a rolled one: keys
    [..., head_dim] float32, cos and signed_sin from ``key_rotation`` (broadcast against keys)."""
    half = keys.shape[-1] // 2
    first, second = keys[..., :half], keys[..., half:]
    cos, sin = cos[..., :half], signed_sin[..., half:]
    kept = first.clone()
    first.mul_(cos).addcmul_(second, sin, value=-1)
    second.mul_(cos).addcmul_(kept, sin)


@torch.inference_mode()
def cap_distances(cache: PagedKVCache, seq: Sequence, inv_freq: torch.Tensor, cap: DistanceCap) -> bool:
    """Collapse ``seq``'s old pages if its oldest uncollapsed key is too far behind; True if it did.

    Before: pages ``[0, seq.collapsed_pages)`` sit at ``seq.collapsed_position``, later tokens at their
    own index. After: pages ``[0, m)`` with ``m = (n - max_distance) // page_size`` sit at
    ``n - max_distance``.
    """
    size = cache.page_size
    oldest = seq.collapsed_position if seq.collapsed_pages else 0
    if seq.num_tokens - oldest <= cap.max_distance + cap.slack:
        return False
    target = seq.num_tokens - cap.max_distance
    count = target // size
    if count <= seq.collapsed_pages:
        return False
    # pages collapsed before all move by one distance (one cos/sin row); the newly collapsed ones, each
    # token from its own position, by per-token rows (built once for every layer)
    moved = seq.collapsed_pages
    shift = torch.tensor([target - seq.collapsed_position], device=cache.k.device)
    old_cos, old_sin = key_rotation(shift, inv_freq)
    own = torch.arange(moved * size, count * size, device=cache.k.device).view(count - moved, 1, size)
    new_cos, new_sin = key_rotation(target - own, inv_freq)  # [new pages, 1 (kv heads), page_size, d]

    def move(keys: torch.Tensor, first: int) -> torch.Tensor:
        """keys: [run, kv_heads, page_size, head_dim] of logical pages ``first ..`` -> float32 at target
        (``keys`` itself, moved in place, when they are float32)."""
        wide = keys.float()
        split = min(max(moved - first, 0), len(keys))  # the run's pages that were collapsed before
        fresh = slice(first + split - moved, first + len(keys) - moved)
        if split:
            rotate_in_place(wide[:split], old_cos, old_sin)
        if split < len(keys):
            rotate_in_place(wide[split:], new_cos[fresh], new_sin[fresh])
        return wide

    cache.rewrite_keys(seq.seq_id, count, move)
    seq.collapsed_pages, seq.collapsed_position = count, target
    return True
