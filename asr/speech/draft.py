"""Whisper drafts: the Whisper decoder's own transcript of a chunk, written from the encoder output
the speech LLM already computed (cross-modal error correction).

The draft goes into the LLM's context after the chunk's audio embeddings (``asr.speech.prompt``) and
the LLM writes the final transcript from audio, draft and everything earlier in the recording; the
draft's tokens also serve as speculative proposals for the LLM's greedy decode
(``LLMEngine.accept_proposal``). Two backends decode the same weights greedily:

- ``Ct2Drafter``: CTranslate2's Whisper ``generate`` on the CPU, as faster-whisper runs it;
- ``HfDrafter``: transformers' ``WhisperForConditionalGeneration.generate`` (CUDA, training).

Both take the encoder's full 30 s windows ([batch, 1500, dim]: Whisper's decoder attends to all of
them, padding included) and the chunk lengths, and return one stripped draft per chunk. A chunk that
Whisper judges to hold no speech gets an empty draft (``judged_silent``), and a session writes no
words for it.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

NO_SPEECH_PROB = 0.6  # Whisper's own rule: this likely silent, with a draft this unsure
LOW_LOGPROB = -1.0
# and a weaker no-speech signal with a far less sure draft: music and tones, which Whisper reads as
# made-up sentences at mean log-probabilities of -1.9 and below (real dev and accented speech: >= -1.4)
WEAK_NO_SPEECH_PROB = 0.3
VERY_LOW_LOGPROB = -1.5
DRAFT_TOKENS_PER_SECOND = 6  # Whisper tokens; read speech runs at about 4 per second
DRAFT_TOKENS_SLACK = 16


def draft_token_limit(seconds: float) -> int:
    """Most draft tokens for a chunk of ``seconds`` (a runaway draft is cut there)."""
    return min(224, math.ceil(seconds * DRAFT_TOKENS_PER_SECOND) + DRAFT_TOKENS_SLACK)


def judged_silent(no_speech_prob: float, mean_logprob: float) -> bool:
    """Whether a chunk holds no speech Whisper can read, from its no-speech probability and its draft's
    mean log-probability (over the draft's tokens and the end token)."""
    return (no_speech_prob > NO_SPEECH_PROB and mean_logprob < LOW_LOGPROB) or (
        no_speech_prob > WEAK_NO_SPEECH_PROB and mean_logprob < VERY_LOW_LOGPROB
    )


class Drafter(Protocol):
    """windows: [batch, 1500, dim] encoder output; seconds: per chunk its audio length."""

    def __call__(self, windows: torch.Tensor, seconds: list[float]) -> list[str]: ...


class Ct2Drafter:
    """Greedy drafts from a loaded ``ctranslate2.models.Whisper`` and its tokenizer (``tokenizers``)."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        ids = [tokenizer.token_to_id(token) for token in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                           "<|notimestamps|>")]
        if None in ids:
            raise ValueError("the Whisper tokenizer lacks the English transcription prompt tokens")
        self.prompt = ids
        self.first_special = tokenizer.token_to_id("<|endoftext|>")  # text tokens come before it

    def __call__(self, windows: torch.Tensor, seconds: list[float]) -> list[str]:
        import ctranslate2

        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(windows.float().cpu().numpy()))
        results = self.model.generate(
            storage,
            [self.prompt] * len(seconds),
            beam_size=1,
            return_scores=True,
            return_no_speech_prob=True,
            max_length=len(self.prompt) + draft_token_limit(max(seconds)),
        )
        drafts = []
        for result, chunk_seconds in zip(results, seconds):
            ids = [token for token in result.sequences_ids[0] if token < self.first_special]
            length = len(result.sequences_ids[0])  # the score is the mean log-probability over these;
            logprob = result.scores[0] * length / (length + 1)  # Whisper's mean counts the end token too
            silent = judged_silent(result.no_speech_prob, logprob)
            drafts.append(
                "" if silent else self.tokenizer.decode(ids[: draft_token_limit(chunk_seconds)]).strip()
            )
        return drafts


class HfDrafter:
    """Greedy drafts from a ``WhisperForConditionalGeneration`` (its encoder output given)."""

    def __init__(self, whisper, tokenizer) -> None:
        self.whisper, self.tokenizer = whisper, tokenizer
        self.start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        self.end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        no_speech = [tokenizer.convert_tokens_to_ids(t) for t in ("<|nospeech|>", "<|nocaptions|>")]
        self.no_speech = next(t for t in no_speech if t is not None and t != tokenizer.unk_token_id)

    @torch.no_grad()
    def __call__(self, windows: torch.Tensor, seconds: list[float]) -> list[str]:
        from transformers.modeling_outputs import BaseModelOutput

        param = next(self.whisper.parameters())
        hidden = windows.to(param.device, param.dtype)
        out = self.whisper.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), language="en",
                                    task="transcribe", num_beams=1, do_sample=False,
                                    max_new_tokens=draft_token_limit(max(seconds)),
                                    return_dict_in_generate=True, output_scores=True)
        # mean log-probability of each draft's tokens and its end token, as CTranslate2 scores them
        picked = out.sequences[:, -len(out.scores):]  # [batch, steps]
        logprobs = torch.stack(out.scores, 1).float().log_softmax(-1).gather(2, picked[..., None])[..., 0]
        ended = (picked == self.end).long().cumsum(1)
        counted = (ended == 0) | ((ended == 1) & (picked == self.end))  # up to the first end token
        mean_logprob = (logprobs.nan_to_num(neginf=0.0) * counted).sum(1) / counted.sum(1).clamp(min=1)
        start = torch.full((len(seconds), 1), self.start, device=param.device)
        first = self.whisper.model.decoder(input_ids=start, encoder_hidden_states=hidden).last_hidden_state
        no_speech_prob = self.whisper.proj_out(first[:, 0]).float().softmax(-1)[:, self.no_speech]
        texts = self.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
        silent = [judged_silent(p, lp) for p, lp in zip(no_speech_prob.tolist(), mean_logprob.tolist())]
        return ["" if quiet else text.strip() for text, quiet in zip(texts, silent)]
