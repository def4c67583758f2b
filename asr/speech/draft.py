"""Whisper drafts: the Whisper decoder's own transcript of a chunk, written from the encoder output
the speech LLM already computed (cross-modal error correction).

The draft goes into the LLM's context after the chunk's audio embeddings (``asr.speech.prompt``) and
the LLM writes the final transcript from audio, draft and everything earlier in the recording; the
draft's tokens also serve as speculative proposals for the LLM's greedy decode
(``LLMEngine.accept_proposal``). Two backends decode the same weights greedily:

- ``Ct2Drafter``: CTranslate2's Whisper ``generate`` on the CPU, as faster-whisper runs it;
- ``HfDrafter``: transformers' ``WhisperForConditionalGeneration.generate`` (CUDA, training).

Both take the encoder's full 30 s windows ([batch, 1500, dim]: Whisper's decoder attends to all of
them, padding included) and the chunk lengths, and return one ``Draft`` per chunk: its stripped text
and how sure Whisper was of each word (the probability of its least likely token, as Whisper's greedy
search saw it) and of ending there. A chunk that Whisper judges to hold no speech gets an empty draft
(``judged_silent``), and a session writes no words for it. The confidences gate the LLM's corrections
(``asr.speech.draft_decoding``): it may change only words Whisper was unsure of.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

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


@dataclass(frozen=True)
class DraftWord:
    """One word of a draft: characters [start, end) of ``Draft.text`` (its punctuation included) and
    Whisper's probability of it: the least probable of its tokens that spell letters or digits (of all
    its tokens when none does), so punctuation never makes a word look unsure."""

    start: int
    end: int
    probability: float


@dataclass(frozen=True)
class Hypothesis:
    """Another reading of a chunk from Whisper's beam search: text (stripped) and logprob: Whisper's
    log-probability of its tokens and its end (nats)."""

    text: str
    logprob: float


@dataclass(frozen=True)
class AlternativeSearch:
    """Whisper's beam search (``beam_size``) for ``count`` other readings of each draft that is not sure
    at ``gate`` (``Draft.sure``); the speech LLM then picks among them (``asr.speech.draft_decoding``).
    Drafts with more than ``max_unsure_share`` of their words below ``unsure_word`` get none: the LLM
    corrects those token by token and reads no readings (1.0: every unsure draft gets them)."""

    gate: float
    count: int = 5
    beam_size: int = 5
    max_unsure_share: float = 1.0
    unsure_word: float = 0.5

    def wants(self, draft: Draft) -> bool:
        """Whether ``draft`` gets other readings."""
        return (bool(draft.text) and not draft.sure(self.gate)
                and draft.unsure_share(self.unsure_word) <= self.max_unsure_share)


@dataclass(frozen=True)
class Draft:
    """Whisper's transcript of one chunk: text (stripped; empty when judged silent), its words in order,
    end_probability: Whisper's probability of ending the transcript there (0 when cut at the token
    limit: a runaway's end is nothing to keep), logprob: Whisper's log-probability of the draft (its
    tokens and its end, nats), alternatives: other readings (``AlternativeSearch``; none for a sure
    draft)."""

    text: str
    words: tuple[DraftWord, ...] = ()
    end_probability: float = 1.0
    logprob: float = 0.0
    alternatives: tuple[Hypothesis, ...] = ()

    def sure(self, gate: float) -> bool:
        """Whether Whisper was at least ``gate`` sure of every word and of the end."""
        return self.end_probability >= gate and all(word.probability >= gate for word in self.words)

    def keeps_sure_words(self, text: str, gate: float) -> bool:
        """Whether ``text`` holds every word of this draft Whisper was at least ``gate`` sure of, in order
        (compared without case or punctuation): a reading that only changes unsure words."""
        remaining = iter(_plain_words(text))
        return all(word in remaining for word in _plain_words(" ".join(
            self.text[w.start : w.end] for w in self.words if w.probability >= gate)))

    def unsure_share(self, probability: float) -> float:
        """The share of words Whisper gave less than ``probability`` (0 for an empty draft)."""
        return sum(word.probability < probability for word in self.words) / max(1, len(self.words))

    def span_probability(self, start: int, end: int) -> float:
        """Whisper's confidence in the characters [start, end) of ``text``: the least probable word they
        touch; characters between words take the next word's (the end's past the last word)."""
        touched = [word.probability for word in self.words if word.start < end and start < word.end]
        if touched:
            return min(touched)
        following = next((word.probability for word in self.words if word.start >= end), None)
        return self.end_probability if following is None else following


def _plain_words(text: str) -> list[str]:
    """Words of ``text`` lower-cased, without punctuation."""
    plain = ("".join(char for char in raw if char.isalnum() or char == "'").lower() for raw in text.split())
    return [word for word in plain if word]


def draft_from_tokens(token_ids: Sequence[int], probabilities: Sequence[float], end_probability: float,
                      decode: Callable[[list[int]], str], logprob: float = 0.0) -> Draft:
    """A ``Draft`` from Whisper's text tokens, the probability of each as it was picked, and of the end.

    Tokens are grouped into pieces that decode to whole characters (a multi-byte character may span
    tokens); a piece that starts with a space starts a word, as Whisper's tokens mark word boundaries.
    decode: the Whisper tokenizer's ids -> text.
    """
    pieces: list[tuple[str, list[float]]] = []
    pending_ids: list[int] = []
    pending_probs: list[float] = []
    for token, probability in zip(token_ids, probabilities):
        pending_ids.append(token)
        pending_probs.append(probability)
        text = decode(pending_ids)
        if "\ufffd" not in text:
            pieces.append((text, pending_probs))
            pending_ids, pending_probs = [], []
    full = "".join(text for text, _ in pieces)
    lead = len(full) - len(full.lstrip())
    words: list[DraftWord] = []
    word_start, spelled, every, position = None, [], [], 0
    for text, probs in pieces:
        starts_word = text[:1].isspace() or word_start is None
        if starts_word and word_start is not None and every:
            words.append(DraftWord(word_start - lead, position - lead, min(spelled or every)))
            word_start, spelled, every = None, [], []
        if word_start is None and text.strip():
            word_start = position + len(text) - len(text.lstrip())
        every += probs
        if any(char.isalnum() for char in text):
            spelled += probs
        position += len(text)
    if word_start is not None and every:
        words.append(DraftWord(word_start - lead, len(full.rstrip()) - lead, min(spelled or every)))
    return Draft(full.strip(), tuple(words), end_probability, logprob)


SILENT = Draft("")


class Drafter(Protocol):
    """windows: [batch, 1500, dim] encoder output; seconds: per chunk its audio length; search: other
    readings of unsure drafts (None: none)."""

    def __call__(self, windows: torch.Tensor, seconds: list[float],
                 search: AlternativeSearch | None = None) -> list[Draft]: ...


def spelling_classes(decode: Callable[[list[int]], str], first_special: int) -> np.ndarray:
    """[first_special + 1] int64, a class per text token and the end token: tokens that spell the same
    text but for letter case share one (" You" and " you"), so a word's probability counts every casing
    of it: Whisper often hesitates over the case of a sentence's first word, which is no doubt about the
    words. Tokens past these (special, timestamps) are classes of their own."""
    classes = np.arange(first_special + 1, dtype=np.int64)
    first_of: dict[str, int] = {}
    for token in range(first_special):
        text = decode([token])
        if "\ufffd" not in text:
            classes[token] = first_of.setdefault(text.lower(), token)
    return classes


def _class_probability(logits: np.ndarray, token: int, classes: np.ndarray) -> float:
    """Probability of ``token``'s spelling class under ``logits`` [vocab] (suppressed tokens sit at the
    float minimum)."""
    weights = np.exp(logits.astype(np.float64) - logits.max())
    members = np.flatnonzero(classes == classes[token]) if token < len(classes) else [token]
    return float(weights[members].sum() / weights.sum())


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
        self.classes = spelling_classes(tokenizer.decode, self.first_special)

    def __call__(self, windows: torch.Tensor, seconds: list[float],
                 search: AlternativeSearch | None = None) -> list[Draft]:
        import ctranslate2

        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(windows.float().cpu().numpy()))
        results = self.model.generate(
            storage,
            [self.prompt] * len(seconds),
            beam_size=1,
            return_scores=True,
            return_no_speech_prob=True,
            return_logits_vocab=True,  # [steps][vocab] logits as greedy search saw them
            max_length=len(self.prompt) + draft_token_limit(max(seconds)),
        )
        drafts = []
        for result, chunk_seconds in zip(results, seconds):
            sequence = result.sequences_ids[0]
            length = len(sequence)  # the score is the mean log-probability over these;
            logprob = result.scores[0] * length / (length + 1)  # Whisper's mean counts the end token too
            if judged_silent(result.no_speech_prob, logprob):
                drafts.append(SILENT)
                continue
            steps = [np.asarray(step) for step in result.logits[0]]
            kept = [(token, _class_probability(step, token, self.classes))
                    for token, step in zip(sequence, steps) if token < self.first_special]
            limit = draft_token_limit(chunk_seconds)
            ended = len(steps) > length and len(kept) <= limit  # the end token was picked, not the length cap
            end_probability = (_class_probability(steps[length], self.first_special, self.classes)
                               if ended else 0.0)
            kept = kept[:limit]
            drafts.append(draft_from_tokens([t for t, _ in kept], [p for _, p in kept], end_probability,
                                            self.tokenizer.decode, logprob=result.scores[0] * length))
        return self._with_alternatives(windows, seconds, drafts, search) if search else drafts

    def _with_alternatives(self, windows: torch.Tensor, seconds: list[float], drafts: list[Draft],
                           search: AlternativeSearch) -> list[Draft]:
        """``drafts`` with Whisper's ``search.count`` best beam readings added to each unsure one (its
        text, once; log-probabilities as sums: CTranslate2 scores a beam by its mean log-probability)."""
        import ctranslate2

        unsure = [i for i, draft in enumerate(drafts) if search.wants(draft)]
        if not unsure:
            return drafts
        picked = np.ascontiguousarray(windows[unsure].float().cpu().numpy())
        results = self.model.generate(
            ctranslate2.StorageView.from_array(picked), [self.prompt] * len(unsure),
            beam_size=search.beam_size, num_hypotheses=search.count, return_scores=True,
            max_length=len(self.prompt) + draft_token_limit(max(seconds[i] for i in unsure)),
        )
        drafts = list(drafts)
        for index, result in zip(unsure, results):
            readings: dict[str, float] = {}
            for sequence, score in zip(result.sequences_ids, result.scores):
                text_ids = [token for token in sequence if token < self.first_special]
                text = self.tokenizer.decode(text_ids[: draft_token_limit(seconds[index])]).strip()
                if text and text != drafts[index].text:
                    readings.setdefault(text, score * len(sequence))
            alternatives = tuple(Hypothesis(text, logprob) for text, logprob in readings.items())
            drafts[index] = replace(drafts[index], alternatives=alternatives)
        return drafts


class HfDrafter:
    """Greedy drafts from a ``WhisperForConditionalGeneration`` (its encoder output given)."""

    def __init__(self, whisper, tokenizer) -> None:
        self.whisper, self.tokenizer = whisper, tokenizer
        self.start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        self.end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        no_speech = [tokenizer.convert_tokens_to_ids(t) for t in ("<|nospeech|>", "<|nocaptions|>")]
        self.no_speech = next(t for t in no_speech if t is not None and t != tokenizer.unk_token_id)
        self.prompt = tokenizer.convert_tokens_to_ids(
            ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
        classes = torch.arange(whisper.config.vocab_size)  # [vocab]
        classes[: self.end + 1] = torch.from_numpy(spelling_classes(tokenizer.decode, self.end))
        self.classes = classes.to(next(whisper.parameters()).device)

    @torch.no_grad()
    def __call__(self, windows: torch.Tensor, seconds: list[float],
                 search: AlternativeSearch | None = None) -> list[Draft]:
        # cuDNN's fused attention failed at random batch shapes in Whisper's cross-attention on an H100
        # (torch 2.11, mid-training); the other fused kernels serve these shapes as well
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return self._drafts(windows, seconds, search)

    def _drafts(self, windows: torch.Tensor, seconds: list[float],
                search: AlternativeSearch | None) -> list[Draft]:
        param = next(self.whisper.parameters())
        hidden = windows.to(param.device, param.dtype)
        from transformers.modeling_outputs import BaseModelOutput

        out = self.whisper.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), language="en",
                                    task="transcribe", num_beams=1, do_sample=False,
                                    max_new_tokens=draft_token_limit(max(seconds)),
                                    return_dict_in_generate=True, output_scores=True)
        # mean log-probability of each draft's tokens and its end token, as CTranslate2 scores them
        picked = out.sequences[:, -len(out.scores):]  # [batch, steps]
        step_logprobs = torch.stack(out.scores, 1).float().log_softmax(-1)  # [batch, steps, vocab]
        logprobs = step_logprobs.gather(2, picked[..., None])[..., 0]
        end_logprobs = step_logprobs[..., self.end]
        ended = (picked == self.end).long().cumsum(1)
        counted = (ended == 0) | ((ended == 1) & (picked == self.end))  # up to the first end token
        mean_logprob = (logprobs.nan_to_num(neginf=0.0) * counted).sum(1) / counted.sum(1).clamp(min=1)
        start = torch.full((len(seconds), 1), self.start, device=param.device)
        first = self.whisper.model.decoder(input_ids=start, encoder_hidden_states=hidden).last_hidden_state
        no_speech_prob = self.whisper.proj_out(first[:, 0]).float().softmax(-1)[:, self.no_speech]
        drafts = []
        for row, chunk_seconds in enumerate(seconds):
            if judged_silent(float(no_speech_prob[row]), float(mean_logprob[row])):
                drafts.append(SILENT)
                continue
            tokens = picked[row].tolist()
            same_spelling = self.classes[None, :] == self.classes[picked[row]][:, None]  # [steps, vocab]
            probs = (step_logprobs[row].exp() * same_spelling).sum(-1).tolist()
            text_steps = [step for step, token in enumerate(tokens)
                          if ended[row, step] == 0 and token < self.end]
            limit = draft_token_limit(chunk_seconds)
            end_step = int(counted[row].sum()) - 1  # where the end token was picked (if it was)
            end_probability = (float(end_logprobs[row, end_step].exp())
                               if tokens[end_step] == self.end and len(text_steps) <= limit else 0.0)
            kept = text_steps[:limit]
            logprob = float((logprobs[row].nan_to_num(neginf=0.0) * counted[row]).sum())
            drafts.append(draft_from_tokens([tokens[s] for s in kept], [probs[s] for s in kept],
                                            end_probability, self.tokenizer.decode, logprob))
        return self._with_alternatives(hidden, seconds, drafts, search) if search else drafts

    def _with_alternatives(self, hidden: torch.Tensor, seconds: list[float], drafts: list[Draft],
                           search: AlternativeSearch) -> list[Draft]:
        """``drafts`` with Whisper's ``search.count`` best beam readings added to each unsure one, each
        with its log-probability summed over its tokens and end (teacher-forced)."""
        unsure = [i for i, draft in enumerate(drafts) if search.wants(draft)]
        if not unsure:
            return drafts
        from transformers import GenerationMixin
        from transformers.modeling_outputs import BaseModelOutput

        # the generic beam search: Whisper's own generate cannot return several beams from encoder outputs
        prompt = torch.tensor([self.prompt] * len(unsure), device=hidden.device)
        sequences = GenerationMixin.generate(
            self.whisper, encoder_outputs=BaseModelOutput(last_hidden_state=hidden[unsure]),
            decoder_input_ids=prompt, num_beams=search.beam_size, num_return_sequences=search.count,
            do_sample=False, max_new_tokens=draft_token_limit(max(seconds[i] for i in unsure)))
        generated = sequences[:, prompt.shape[1] :]  # [unsure * count, steps]
        encoded = hidden[unsure].repeat_interleave(search.count, dim=0)
        logits = self.whisper(encoder_outputs=(encoded,), decoder_input_ids=sequences).logits
        logprobs = logits[:, prompt.shape[1] - 1 : -1].float().log_softmax(-1)
        token_logprobs = logprobs.gather(2, generated[..., None])[..., 0]  # [unsure * count, steps]
        counted = (generated == self.end).long().cumsum(1)
        counted = (counted == 0) | ((counted == 1) & (generated == self.end))
        sums = (token_logprobs * counted).sum(1).tolist()
        drafts = list(drafts)
        for position, index in enumerate(unsure):
            readings: dict[str, float] = {}
            for row in range(position * search.count, (position + 1) * search.count):
                text_ids = [t for t, keep in zip(generated[row].tolist(), counted[row].tolist())
                            if keep and t < self.end][: draft_token_limit(seconds[index])]
                text = self.tokenizer.decode(text_ids).strip()
                if text and text != drafts[index].text:
                    readings.setdefault(text, sums[row])
            alternatives = tuple(Hypothesis(text, logprob) for text, logprob in readings.items())
            drafts[index] = replace(drafts[index], alternatives=alternatives)
        return drafts
