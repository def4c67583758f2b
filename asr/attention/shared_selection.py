"""Key blocks chosen once and reused by prefills at the same positions.

Scoring the readings of one chunk prefills each after the same context, one after another (sharing
what prefix they can). Their query blocks sit at the same positions and their texts differ in a word
or two, so the context blocks worth reading are the same: the first prefill of a layer chooses them
(``asr.attention.block_selection``) and the later ones whose query blocks it covered reuse its choice,
so the estimate (a read of the candidate keys per layer) is paid once per chunk, not once per reading.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from asr.attention.block_selection import prefill_blocks


class SharedSelection:
    """Per layer, the blocks chosen for a run of query blocks (``select_blocks``' [kv_heads, query
    blocks, width] int32 and the index of its first query block)."""

    def __init__(self) -> None:
        self._chosen: dict[int, tuple[int, torch.Tensor]] = {}

    def blocks(self, layer: int, start: int, length: int, block_size: int,
               choose: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The blocks of the query blocks holding positions ``[start, length)``: a slice of what this
        layer chose before when that covered them, else ``choose()`` (kept for the next call)."""
        first, count = prefill_blocks(start, length, block_size)
        if layer in self._chosen:
            kept_first, kept = self._chosen[layer]
            offset = first - kept_first
            if offset >= 0 and offset + count <= kept.shape[1]:
                return kept[:, offset : offset + count]
        chosen = choose()
        self._chosen[layer] = (first, chosen)
        return chosen
