"""Token choice from logits: greedy rows and temperature/top-p rows in one batch, on device."""

from __future__ import annotations

import torch


def sample(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row.

    logits: [batch, vocab] float32; temperatures: [batch] float32 (0 = greedy); top_ps: [batch] float32
    in (0, 1]. Returns [batch] int64 token ids. Top-p keeps the smallest prefix of the sorted
    distribution whose mass reaches ``top_p`` (always at least the best token). A batch that is all
    greedy never gets here: the engine takes the argmax itself, without sampling.
    """
    greedy = logits.argmax(dim=-1)
    scaled = logits / temperatures.clamp(min=1e-5)[:, None]
    probs = scaled.softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_ps[:, None], 0.0)
    picked = torch.multinomial(sorted_probs, 1, generator=generator)
    sampled = order.gather(1, picked)[:, 0]
    return torch.where(temperatures > 0, sampled, greedy)
