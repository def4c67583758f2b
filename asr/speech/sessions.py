"""Training sessions: a few consecutive (audio embeddings, transcript) turns in one context, laid out
as inference lays out a long recording (asr.speech.prompt), with labels on the transcripts."""

from __future__ import annotations

import torch

from asr.speech.prompt import PromptIds

IGNORE = -100


def session_inputs(
    audio_embeds: list[torch.Tensor],
    transcript_ids: list[list[int]],
    prompt: PromptIds,
    embed_tokens: torch.nn.Module,
    supervised: list[bool] | None = None,
    draft_ids: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One session's input embeddings and labels.

    audio_embeds: per turn [audio_tokens, hidden]; transcript_ids: per turn token ids (no end token);
    supervised: per turn, whether its transcript is learnt (default: all); draft_ids: per turn the
    ids of its Whisper draft (``asr.speech.prompt.draft_token_ids``), or None for the plain layout.
    Returns embeds [length, hidden] and labels [length] (IGNORE except the supervised turns'
    transcript tokens and the end-of-turn token that closes each of them).
    """
    device = audio_embeds[0].device
    pieces: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def add_text(ids: list[int], supervised: bool) -> None:
        ids_t = torch.tensor(ids, dtype=torch.long, device=device)
        pieces.append(embed_tokens(ids_t))
        labels.append(ids_t if supervised else torch.full_like(ids_t, IGNORE))

    add_text(prompt.session_start, False)
    turns = len(audio_embeds)
    for embeds, ids, learn, draft in zip(audio_embeds, transcript_ids, supervised or [True] * turns,
                                         draft_ids or [None] * turns):
        add_text(prompt.before_audio, False)
        pieces.append(embeds.to(pieces[0].dtype))
        labels.append(torch.full((embeds.shape[0],), IGNORE, dtype=torch.long, device=device))
        add_text(prompt.after_audio_with(draft), False)
        add_text(ids + [prompt.end_of_turn], learn)
        add_text(prompt.after_transcript[1:], False)  # the newline after the end token
    return torch.cat(pieces), torch.cat(labels)


def pad_sessions(sessions: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad sessions to a batch: embeds [batch, length, hidden], labels [batch, length],
    attention_mask [batch, length]."""
    length = max(e.shape[0] for e, _ in sessions)
    hidden = sessions[0][0].shape[1]
    embeds = sessions[0][0].new_zeros(len(sessions), length, hidden)
    labels = torch.full((len(sessions), length), IGNORE, dtype=torch.long, device=embeds.device)
    mask = torch.zeros(len(sessions), length, dtype=torch.long, device=embeds.device)
    for row, (e, l) in enumerate(sessions):
        embeds[row, : e.shape[0]] = e
        labels[row, : l.shape[0]] = l
        mask[row, : e.shape[0]] = 1
    return embeds, labels, mask
