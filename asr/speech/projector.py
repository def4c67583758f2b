"""Projector: stacks consecutive audio-encoder frames and maps them into the LLM's embedding space."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ProjectorConfig:
    """encoder_dim: audio-encoder width (Whisper base: 512); llm_dim: LLM hidden size (SmolLM2-135M:
    576); stack: encoder frames per audio token (Whisper gives 50 frames/s, so 4 -> 12.5 tokens/s);
    hidden: width of the MLP's middle layer."""

    encoder_dim: int = 512
    llm_dim: int = 576
    stack: int = 4
    hidden: int = 1024


class FrameStackProjector(nn.Module):
    """[batch, frames, encoder_dim] -> [batch, ceil(frames / stack), llm_dim]."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.encoder_dim * config.stack)
        self.up = nn.Linear(config.encoder_dim * config.stack, config.hidden)
        self.down = nn.Linear(config.hidden, config.llm_dim)

    def num_tokens(self, frames: int) -> int:
        """Audio tokens produced for ``frames`` encoder frames."""
        return -(-frames // self.config.stack)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, length, dim = frames.shape
        stack = self.config.stack
        padded = F.pad(frames, (0, 0, 0, self.num_tokens(length) * stack - length))
        stacked = padded.reshape(batch, -1, stack * dim)
        return self.down(F.gelu(self.up(self.norm(stacked))))
