"""State of one sequence in the engine: its cache id, tokens, next-token logits and KV-read counters."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Sequence:
    """One growing context (a QA prompt, or a speech session appending audio and text segments).

    seq_id: the id of its pages in the PagedKVCache; num_tokens: positions in the cache (tokens and
    embedding rows alike); token_ids: the ids of token positions (None for embedding rows);
    next_logits: [vocab] float32 logits for the token after the last cached position (set by
    ``append`` and by every generated token), None before anything was appended.
    pages_read / pages_dense: KV pages (x layers x kv heads) that decode steps of this sequence read,
    and what dense decode would have read: their ratio is the share of the KV cache read.
    collapsed_pages / collapsed_position: the first ``collapsed_pages`` pages hold keys moved to
    ``collapsed_position`` (``asr.llm.distance_cap``); later tokens sit at their own index (rotary
    positions are these less the cache's ``position_shift``: only distances matter).
    """

    seq_id: int
    num_tokens: int = 0
    token_ids: list[int | None] = field(default_factory=list)
    next_logits: torch.Tensor | None = None
    pages_read: int = 0
    pages_dense: int = 0
    collapsed_pages: int = 0
    collapsed_position: int = 0

    @property
    def kv_read_share(self) -> float:
        """Pages read by decode steps / pages a dense decode would read (1.0 before any decode)."""
        return self.pages_read / self.pages_dense if self.pages_dense else 1.0
