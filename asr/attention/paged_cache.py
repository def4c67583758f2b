"""Paged KV cache: a pool of fixed-size pages per layer, page tables and per-page key statistics.

All layers share one page numbering: a sequence owns the same page ids in every layer, so the
page table and slot mapping are built once per step and reused by every layer.

The cache owns its bookkeeping: sequences' page lists, lengths and position shifts change only through
its methods (``reserve``, ``truncate``, ``free_sequence``, ``rewrite_keys``, ``shift_positions``);
readers use ``length``, ``next_position``, ``pages`` and ``page_table``. ``layout_version`` changes
whenever a sequence loses pages (truncate, free), so a holder of a page table built earlier (the runner
keeps one between decode steps) knows to rebuild it instead of only appending the pages allocated since.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from asr.attention.append import append_kv
from asr.attention.page_stats import NUM_STATS, page_key_stats
from asr.attention.transfer import to_device
from asr.errors import CacheCapacityError

REWRITE_PAGES = 128  # pages rewritten at once (``rewrite_keys``): 1.5 MB of float32 keys at 3 kv heads, d 64


@dataclass(frozen=True)
class CacheShape:
    """Sizes of a paged KV cache.

    num_layers: decoder layers; num_pages: pages in the pool (per layer); page_size: tokens per
    page; num_kv_heads, head_dim: key/value head geometry.
    """

    num_layers: int
    num_pages: int
    page_size: int
    num_kv_heads: int
    head_dim: int


class PageAllocator:
    """Hands out page ids from a fixed pool and takes them back (lowest free id first)."""

    def __init__(self, num_pages: int) -> None:
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def ensure_available(self, count: int) -> None:
        """Raise CacheCapacityError unless ``count`` pages are free."""
        if count > len(self._free):
            raise CacheCapacityError(
                f"KV cache needs {count} more pages but only {len(self._free)} of "
                f"{self.num_pages} are free; shorten the input or give the cache more memory"
            )

    def allocate(self, count: int) -> list[int]:
        self.ensure_available(count)
        return [self._free.pop() for _ in range(count)]

    def free(self, pages: list[int]) -> None:
        self._free.extend(sorted(pages, reverse=True))
        self._free.sort(reverse=True)


def gather_sequence(cache_layer: torch.Tensor, page_table: torch.Tensor, length: int) -> torch.Tensor:
    """K or V of a sequence's first ``length`` tokens, in order: cache_layer [num_pages, kv_heads,
    page_size, head_dim] (one layer), page_table [>= pages] int -> [length, kv_heads, head_dim]."""
    page_size = cache_layer.shape[2]
    position = torch.arange(length, device=cache_layer.device)
    return cache_layer[page_table.long()[position // page_size], :, position % page_size]


class PagedKVCache:
    """K/V pages, key statistics and per-sequence page lists.

    k, v: [num_layers, num_pages, num_kv_heads, page_size, head_dim]
    key_stats: [num_layers, num_pages, num_kv_heads, NUM_STATS, head_dim] (mean, std, min, max)
    layout_version: bumped when any sequence loses pages (page tables built before are stale).
    A sequence's token ``i`` is embedded at rotary position ``i - position_shift`` (0 unless the distance
    ceiling moved its recent keys back, ``asr.llm.distance_cap``); ``next_position`` is where the next
    token goes.
    """

    def __init__(self, shape: CacheShape, dtype: torch.dtype, device: torch.device | str) -> None:
        self.shape = shape
        pool = (shape.num_layers, shape.num_pages, shape.num_kv_heads, shape.page_size, shape.head_dim)
        self.k = torch.zeros(pool, dtype=dtype, device=device)
        self.v = torch.zeros(pool, dtype=dtype, device=device)
        stats = (shape.num_layers, shape.num_pages, shape.num_kv_heads, NUM_STATS, shape.head_dim)
        self.key_stats = torch.zeros(stats, dtype=dtype, device=device)
        self.allocator = PageAllocator(shape.num_pages)
        self._seq_pages: dict[int, list[int]] = {}
        self._seq_lens: dict[int, int] = {}
        self._seq_shifts: dict[int, int] = {}
        self._next_seq_id = 0
        self.layout_version = 0

    @property
    def page_size(self) -> int:
        return self.shape.page_size

    def add_sequence(self) -> int:
        """Register an empty sequence and return its id."""
        seq_id = self._next_seq_id
        self._next_seq_id += 1
        self._seq_pages[seq_id] = []
        self._seq_lens[seq_id] = 0
        self._seq_shifts[seq_id] = 0
        return seq_id

    def free_sequence(self, seq_id: int) -> None:
        """Return a sequence's pages to the pool."""
        self.allocator.free(self._seq_pages.pop(seq_id))
        del self._seq_lens[seq_id], self._seq_shifts[seq_id]
        self.layout_version += 1

    def length(self, seq_id: int) -> int:
        """Tokens cached for a sequence."""
        return self._seq_lens[seq_id]

    def position_shift(self, seq_id: int) -> int:
        """How far behind its index a sequence's tokens sit in rotary position."""
        return self._seq_shifts[seq_id]

    def next_position(self, seq_id: int) -> int:
        """The rotary position of a sequence's next token: its length less its position shift."""
        return self._seq_lens[seq_id] - self._seq_shifts[seq_id]

    def shift_positions(self, seq_id: int, delta: int) -> None:
        """Later tokens of a sequence sit ``delta`` more positions behind their index (the caller has
        moved the keys that must move with them, ``rewrite_keys``)."""
        self._seq_shifts[seq_id] += delta

    def page_count(self, seq_id: int) -> int:
        """Pages a sequence holds."""
        return len(self._seq_pages[seq_id])

    def pages(self, seq_id: int, start: int = 0, stop: int | None = None) -> list[int]:
        """Page ids of a sequence's logical pages ``[start, stop)`` (a copy)."""
        return self._seq_pages[seq_id][start:stop]

    def reserve(self, seq_ids: list[int], num_new_tokens: list[int]) -> torch.Tensor:
        """Grow each sequence by its count of new tokens, allocating pages as needed.

        Returns slot_mapping: [sum(num_new_tokens)] int64 on the cache device, the physical slot
        (``page * page_size + offset``) of each new token, sequences in the given order.
        All-or-nothing: if the pool cannot hold every request, nothing changes.
        """
        size = self.page_size
        needed = [
            -(-(self._seq_lens[s] + n) // size) - len(self._seq_pages[s])
            for s, n in zip(seq_ids, num_new_tokens)
        ]
        self.allocator.ensure_available(sum(needed))
        slots: list[int] = []
        for seq_id, count, extra in zip(seq_ids, num_new_tokens, needed):
            pages = self._seq_pages[seq_id]
            pages.extend(self.allocator.allocate(extra))
            start = self._seq_lens[seq_id]
            slots.extend(pages[pos // size] * size + pos % size for pos in range(start, start + count))
            self._seq_lens[seq_id] = start + count
        return to_device(slots, torch.int64, self.k.device)

    def truncate(self, seq_id: int, length: int) -> None:
        """Drop a sequence's tokens from ``length`` on (e.g. a generation loop that was cut out),
        freeing emptied pages and recomputing the key statistics of the new last page."""
        if not 0 <= length <= self._seq_lens[seq_id]:
            raise ValueError(f"cannot truncate a {self._seq_lens[seq_id]}-token sequence to {length}")
        size = self.page_size
        pages = self._seq_pages[seq_id]
        keep = -(-length // size)
        self.allocator.free(pages[keep:])
        del pages[keep:]
        self._seq_lens[seq_id] = length
        self.layout_version += 1
        if length % size:
            last = to_device([pages[-1]], torch.int64, self.k.device)
            fill = to_device([length % size], torch.int64, self.k.device)
            for layer in range(self.shape.num_layers):
                self.key_stats[layer, last] = page_key_stats(self.k[layer, last], fill).to(
                    self.key_stats.dtype
                )

    def rewrite_keys(
        self, seq_id: int, num_pages: int, rewrite: Callable[[torch.Tensor, int], torch.Tensor],
        start: int = 0,
    ) -> None:
        """Replace the keys of a sequence's logical pages ``[start, num_pages)`` in every layer by
        ``rewrite(keys, first)`` and recompute those pages' statistics (a partial last page's over its
        filled slots). The pages go in runs of at most ``REWRITE_PAGES`` (keys: [run, kv_heads,
        page_size, head_dim] of one layer, read in place when the run's ids are consecutive; first: the
        run's first logical page; returns new keys of that shape, any dtype, or ``keys`` itself rewritten
        in place), all layers of a run before the next, so a run's keys stay in the CPU cache from read
        to statistics."""
        length, size = self._seq_lens[seq_id], self.page_size
        if not 0 <= start <= num_pages <= -(-length // size):
            raise ValueError(
                f"pages [{start}, {num_pages}) are not all held by the sequence's {length} tokens "
                f"({size} a page)"
            )
        ids = self._seq_pages[seq_id][:num_pages]
        for first in range(start, num_pages, REWRITE_PAGES):
            run = ids[first : first + REWRITE_PAGES]
            consecutive = run == list(range(run[0], run[0] + len(run)))
            pages = (slice(run[0], run[0] + len(run)) if consecutive
                     else to_device(run, torch.int64, self.k.device))
            fill = None  # every page of the run full, unless it ends in the sequence's partial last page
            if (first + len(run)) * size > length:
                fill = torch.full((len(run),), size, dtype=torch.int64, device=self.k.device)
                fill[-1] = length - (first + len(run) - 1) * size
            for layer in range(self.shape.num_layers):
                keys = self.k[layer, pages]
                rewritten = rewrite(keys, first)
                if rewritten is not keys or not consecutive:  # a copy, or keys gathered by page ids
                    rewritten = rewritten.to(self.k.dtype)
                    self.k[layer, pages] = rewritten
                self.key_stats[layer, pages] = page_key_stats(rewritten, fill).to(self.key_stats.dtype)

    def write(self, layer: int, new_k: torch.Tensor, new_v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Store one layer's new keys/values ([tokens, kv_heads, head_dim]) at reserved slots."""
        append_kv(self.k[layer], self.v[layer], self.key_stats[layer], new_k, new_v, slot_mapping)

    def page_table(self, seq_ids: list[int], width: int | None = None) -> torch.Tensor:
        """[batch, width] int32 page ids of each sequence, padded with 0 (never read: lengths bound it)."""
        width = width or max((len(self._seq_pages[s]) for s in seq_ids), default=0)
        table = torch.zeros((len(seq_ids), max(width, 1)), dtype=torch.int32)
        for row, seq_id in enumerate(seq_ids):
            pages = self._seq_pages[seq_id]
            table[row, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        return to_device(table, torch.int32, self.k.device)

    def lengths(self, seq_ids: list[int]) -> torch.Tensor:
        """[batch] int32 token counts."""
        return to_device([self._seq_lens[s] for s in seq_ids], torch.int32, self.k.device)
