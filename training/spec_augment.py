"""SpecAugment for training: random frequency and time masks on Whisper log-mel features.

The adapter learns from synthetic voices only; masking bands and short stretches of the features
keeps the projector and LoRA from leaning on any one detail of those voices. Masks stay inside each
chunk's audio (the zero-padded rest of the 30-s window is left alone) and are filled with the
chunk's mean feature value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpecAugment:
    """Per chunk, with probability ``prob``: ``freq_masks`` bands of up to ``max_freq_width`` mel
    bins and one time mask of up to ``max_time_width`` frames (10 ms each) per ``frames_per_time_mask``
    frames of audio."""

    prob: float = 0.8
    freq_masks: int = 2
    max_freq_width: int = 12
    frames_per_time_mask: int = 500
    max_time_width: int = 20

    def __call__(
        self, features: torch.Tensor, lengths: list[int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """features: log-mel [batch, mels, frames]; lengths: valid frames per chunk -> masked copy."""
        out = features.clone()
        num_mels = features.shape[1]
        draw = lambda high: int(torch.randint(0, max(high, 0) + 1, (), generator=generator))  # noqa: E731
        for index, length in enumerate(lengths):
            length = min(length, features.shape[2])
            if length <= 0 or float(torch.rand((), generator=generator)) >= self.prob:
                continue
            valid = out[index, :, :length]
            fill = valid.mean()
            for _ in range(self.freq_masks):
                width = draw(self.max_freq_width)
                start = draw(num_mels - width)
                valid[start : start + width, :] = fill
            for _ in range(max(1, length // self.frames_per_time_mask)):
                width = min(draw(self.max_time_width), length)
                start = draw(length - width)
                valid[:, start : start + width] = fill
        return out
