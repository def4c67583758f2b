"""Vocal tract length perturbation (VTLP) on Whisper log-mel features, for training.

The adapter hears a few dozen synthetic voices; stretching or squeezing each chunk's spectrum
along the mel axis by a random factor near 1 moves every formant together, as a longer or shorter
vocal tract does, so each voice stands for a range of speakers (Jaitly and Hinton, 2013). Bin i of
the output reads bin i / factor of the input (linear interpolation, the top bin repeated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MelWarp:
    """Per chunk, with probability ``prob``: a warp factor uniform in [1 - max_warp, 1 + max_warp]."""

    prob: float = 0.8
    max_warp: float = 0.12

    def __call__(
        self, features: torch.Tensor, lengths: list[int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """features: log-mel [batch, mels, frames]; lengths: unused (padding is flat across bins) -> warped
        copy."""
        del lengths
        batch, num_mels, frames = features.shape
        draw = torch.rand(batch, generator=generator)
        factors = 1 + (2 * torch.rand(batch, generator=generator) - 1) * self.max_warp
        factors = torch.where(draw < self.prob, factors, torch.ones_like(factors)).to(features.device)
        source = (torch.arange(num_mels, device=features.device)[None, :] / factors[:, None]).clamp(
            0, num_mels - 1
        )
        below = source.floor().long()
        above = (below + 1).clamp(max=num_mels - 1)
        weight = (source - below).to(features.dtype)[:, :, None]
        take = lambda index: features.gather(1, index[:, :, None].expand(-1, -1, frames))  # noqa: E731
        return take(below) * (1 - weight) + take(above) * weight
