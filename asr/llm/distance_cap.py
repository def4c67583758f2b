"""A ceiling on query-key distances for contexts longer than the model was trained on.

Rotary attention depends only on the distance between a query's and a key's positions. A model that
never saw distances past its training context (SmolLM2-135M: 8k tokens; the speech adapter: a few
thousand) degrades over an hour of audio (~55k tokens). As in LM-Infinite's distance ceiling, old keys
are moved closer, page by page: once the oldest key still at its own position lies more than
``max_distance + slack`` behind the next position ``n``, every whole page behind ``n - max_distance`` is
collapsed to that one position (``Sequence.collapsed_position``, in token indices) and its key statistics
are recomputed. The keys stay in the cache and are still found by content (dense attention, or the top-k
page choice); they only lose their order among themselves.

Only the distances matter, so instead of moving every collapsed key forward again at each collapse, the
recent keys move back: the keys collapsed before stay where they are, the newly collapsed ones move to
them, and the tokens after them (the last ``max_distance`` or so, with the tokens still to come) sit
that much further behind their index (``PagedKVCache.position_shift``; the runner embeds new tokens at
``next_position``). Every distance is what moving the collapsed keys forward would give, and a collapse
touches about ``max_distance + slack`` keys however long the context is. The runner, the kernels and
the CUDA graphs read keys as stored.
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

    Before: pages ``[0, seq.collapsed_pages)`` sit ``n - seq.collapsed_position`` positions behind the
    next token ``n``, later tokens ``n - index`` behind. After: pages ``[0, m)`` with
    ``m = (n - max_distance) // page_size`` sit ``max_distance`` behind ``n`` (``collapsed_position``:
    ``n - max_distance``), later tokens where they were. Moved: the pages newly collapsed, to the pages
    collapsed before, and every later token back by as much as the collapsed position advanced
    (``cache.shift_positions``).
    """
    size = cache.page_size
    oldest = seq.collapsed_position if seq.collapsed_pages else 0
    if seq.num_tokens - oldest <= cap.max_distance + cap.slack:
        return False
    target = seq.num_tokens - cap.max_distance
    count = target // size
    if count <= seq.collapsed_pages:
        return False
    moved = seq.collapsed_pages
    # how far the collapsed position advances: the later tokens move back by that much instead
    back = target - seq.collapsed_position if moved else 0
    device = cache.k.device
    # the newly collapsed pages: each token from its own position to the collapsed one, ``target - back``
    # in the shifted frame (per-token rows, built once for every layer)
    own = torch.arange(moved * size, count * size, device=device).view(count - moved, 1, size)
    new_cos, new_sin = key_rotation(target - back - own, inv_freq)  # [new pages, 1 (kv heads), P, d]
    later_cos, later_sin = key_rotation(torch.tensor([-back], device=device), inv_freq)

    def move(keys: torch.Tensor, first: int) -> torch.Tensor:
        """keys: [run, kv_heads, page_size, head_dim] of logical pages ``first ..`` -> float32 at their
        new positions (``keys`` itself, moved in place, when they are float32)."""
        wide = keys.float()
        split = min(max(count - first, 0), len(keys))  # the run's pages that collapse now
        if split:
            rotate_in_place(wide[:split], new_cos[first - moved : first - moved + split],
                            new_sin[first - moved : first - moved + split])
        if split < len(keys):
            rotate_in_place(wide[split:], later_cos, later_sin)
        return wide

    cache.rewrite_keys(seq.seq_id, cache.page_count(seq.seq_id) if back else count, move, start=moved)
    cache.shift_positions(seq.seq_id, back)
    seq.collapsed_pages, seq.collapsed_position = count, target
    return True
