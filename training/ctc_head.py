"""CTC over the LLM's own vocabulary on the projector's audio tokens: an auxiliary training loss.

Each audio token's logits are its dot products with the LLM's (frozen) input embeddings, plus one
learned blank vector. Minimising CTC against the transcript's token ids pulls every audio token
towards the embedding of the word being spoken, so the LLM reads the audio almost as text from the
first steps instead of leaning on its text prior while alignment slowly emerges. Training only:
inference never runs this head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VocabularyCtcHead(nn.Module):
    """embedding: the LLM's input embedding matrix [vocab, hidden] (read, never trained here).

    Trainable: the blank vector [hidden] with its bias, and one logit scale.
    """

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        self.embedding = embedding
        self.blank = nn.Parameter(torch.zeros(embedding.shape[1]))
        self.blank_bias = nn.Parameter(torch.zeros(()))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def logits(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [batch, tokens, hidden] -> [batch, tokens, vocab + 1] float32; blank is the last class."""
        words = audio @ self.embedding.to(audio.dtype).t()
        blank = (audio @ self.blank.to(audio.dtype))[..., None] + self.blank_bias
        return torch.cat([words, blank.to(words.dtype)], dim=-1).float() * self.log_scale.exp()

    def forward(
        self, audio: torch.Tensor, audio_lengths: torch.Tensor, targets: list[list[int]]
    ) -> torch.Tensor:
        """Mean CTC loss per target token.

        audio: [batch, tokens, hidden] (rows valid up to ``audio_lengths`` [batch]); targets: token ids
        per row (empty for silence). Rows whose audio is too short for their targets add zero.
        """
        log_probs = F.log_softmax(self.logits(audio), dim=-1).transpose(0, 1)  # [tokens, batch, classes]
        target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
        blank = self.embedding.shape[0]
        loss = F.ctc_loss(log_probs, flat.to(audio.device), audio_lengths.cpu(), target_lengths, blank=blank,
                          reduction="sum", zero_infinity=True)
        return loss / max(1, int(target_lengths.sum()))
