"""Long-form transcription through ONE growing LLM context.

Audio is cut at pauses into chunks (``asr.speech.segmenter``); each chunk's audio embeddings are
appended to the session's sequence and its transcript is generated right after, so every chunk
sees all earlier audio and text. Runaway output is cut: a transcript that ends in a repeating
n-gram loop, or whose text compresses like one (Whisper's compression-ratio test), is decoded once
more with sampling, and a loop left at the end of that is removed (one copy kept); a transcript
past the chunk's token budget is stopped. Silence is never sent to the model. Timestamps come
from sample positions, so they cannot drift. Past the distances the model was trained on, old pages are moved
closer before
each chunk (``asr.llm.distance_cap``), so an hour stays in one context without leaving that range.

A session is opened by ``SpeechModel.open_session`` and given its engine (``SpeechModel.open_engine``);
it owns one sequence in it, never the engine, so live sessions can share one. It takes audio
embeddings only: the caller owns encoding (``SpeechModel.encode_chunks``), batched ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from asr.llm.config import SamplingParams
from asr.llm.distance_cap import DistanceCap
from asr.llm.engine import LLMEngine
from asr.speech.audio import SAMPLE_RATE
from asr.speech.draft import Draft
from asr.speech.draft_decoding import DraftDecoding, decode_with_draft, draft_proposal
from asr.speech.prompt import draft_token_ids
from asr.speech.repetition import LoopConfig, loop_start, repetitive, token_budget
from asr.transcript import Segment

if TYPE_CHECKING:  # types only: model.py opens sessions, so this module must not import it at run time
    from asr.speech.model import EncodedChunk, SpeechModel

GREEDY = SamplingParams()  # a chunk's first decode; max_tokens and the stop token are set per chunk
RETRY_SAMPLING = replace(GREEDY, temperature=0.5, top_p=0.95, seed=0)  # after a loop, as Whisper's fallback


@dataclass
class SessionStats:
    """Counters of one session: chunks decoded, loops cut, chunks stopped at their budget, draft tokens
    proposed and accepted, drafts kept whole."""

    chunks: int = 0
    loops_cut: int = 0
    budget_stops: int = 0
    text_tokens: int = 0  # transcript tokens generated
    draft_tokens: int = 0  # transcript tokens proposed by Whisper drafts
    accepted_tokens: int = 0  # of those, kept by the LLM's greedy decode or unchecked (Whisper sure)
    drafts_kept: int = 0  # chunks whose draft Whisper was sure of throughout: kept, nothing decoded
    readings_changed: int = 0  # chunks whose transcript is another of Whisper's readings than its draft


class LongformSession:
    """One recording (or one live stream) in one sequence of ``engine``, an engine over ``model``'s
    weights; feed chunks in order. ``close`` frees the sequence (the engine stays its opener's)."""

    def __init__(self, model: SpeechModel, engine: LLMEngine, loop: LoopConfig = LoopConfig(),
                 distance_cap: DistanceCap | None = DistanceCap(),
                 draft_decoding: DraftDecoding = DraftDecoding(), defer_kept: int = 0) -> None:
        if engine.model is not model.llm:
            raise ValueError(
                "the engine runs other weights than the speech model; open it with model.open_engine"
            )
        self.model, self.loop, self.distance_cap = model, loop, distance_cap
        self.draft_decoding = draft_decoding
        self.engine = engine
        self.seq = self.engine.new_sequence()
        self.engine.append(self.seq, token_ids=model.prompt.session_start)
        self.stats = SessionStats()
        self.pending: list[int] = []  # closing tokens of the last transcript, prefilled with the next chunk
        # the context rows ([n, hidden] each) of up to ``defer_kept`` chunks whose draft was kept whole,
        # not yet prefilled: they go in with the next chunk the LLM must read, or at ``flush``
        self.defer_kept = defer_kept
        self.deferred: list[torch.Tensor] = []

    def close(self) -> None:
        self.engine.free(self.seq)

    def __enter__(self) -> LongformSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def kv_read_share(self) -> float:
        return self.seq.kv_read_share

    def _generate(self, seconds: float, sampling: SamplingParams, proposal: list[int] = (),
                  confidences: list[float] | None = None) -> list[int]:
        """The chunk's transcript tokens, picked as ``sampling`` says (its length and stop token set
        here); a greedy decode goes through ``proposal`` (the draft, with Whisper's confidence per
        token) first (``asr.speech.draft_decoding``)."""
        params = replace(sampling, max_tokens=token_budget(seconds, self.loop),
                         stop_token_ids=(self.model.prompt.end_of_turn,))
        if not proposal or params.temperature != 0:
            return self.engine.generate(self.seq, params)
        tokens, accepted = decode_with_draft(
            self.engine, self.seq, list(proposal), params, self.draft_decoding, confidences
        )
        self.stats.draft_tokens += len(proposal)
        self.stats.accepted_tokens += accepted
        return tokens

    def _runaway(self, seconds: float, tokens: list[int]) -> bool:
        """Whether a transcript loops or overruns the chunk's budget (a reading to leave to the LLM)."""
        return (len(tokens) >= token_budget(seconds, self.loop) or loop_start(tokens, self.loop) is not None
                or repetitive(self._text(tokens), self.loop))

    def _picked_reading(self, seconds: float, draft: Draft) -> list[int] | None:
        """The transcript tokens of the reading of the chunk picked among the draft and Whisper's other
        readings of it (``Draft.alternatives``): the most likely by Whisper's log-probability plus
        ``llm_weight`` times the LLM's (each reading and the turn's end after what the sequence holds).
        A draft sure at the gate is kept whole; readings that change a word Whisper was sure of, or that
        loop or overrun, are left out. None when none is left."""
        tokenizer, end = self.engine.tokenizer, self.model.prompt.end_of_turn
        gate = self.draft_decoding.gate
        readings = [draft] + [other for other in draft.alternatives
                              if draft.keeps_sure_words(other.text, gate)]
        candidates = []  # (reading, its token ids)
        for reading in readings:
            ids = tokenizer(reading.text, add_special_tokens=False).input_ids
            if not self._runaway(seconds, ids):
                candidates.append((reading, ids))
        if not candidates:
            return None
        picked = candidates[0]
        if len(candidates) > 1:
            llm = self.engine.score_continuations(self.seq, [ids + [end] for _, ids in candidates])
            weight = self.draft_decoding.llm_weight
            picked = max(zip(candidates, llm), key=lambda pair: pair[0][0].logprob + weight * pair[1])[0]
        self.stats.readings_changed += picked[0] is not draft
        return picked[1]

    def kept_draft(self, seconds: float, draft: Draft | None) -> list[int] | None:
        """The draft's tokens when it is kept whole, the LLM reading nothing: Whisper sure of every word
        and of its end, and no loop or overrun in it (those go to the LLM). None otherwise."""
        if draft is None or not draft.sure(self.draft_decoding.gate):
            return None
        tokens = self.engine.tokenizer(draft.text, add_special_tokens=False).input_ids
        return None if self._runaway(seconds, tokens) else tokens

    def flush(self) -> None:
        """Prefill the chunks left deferred (``defer_kept``) and the last transcript's closing tokens: the
        context then holds everything so far, and the next chunk prefills only its own rows."""
        if self.deferred:
            self._append([self.engine.embed_tokens(self.pending)])
            self.pending = []

    def _append(self, rows: list[torch.Tensor]) -> None:
        """One prefill of ``rows`` (embeddings [n, hidden] each), after the chunks left deferred: its cost
        grows with the context, so the pieces go in together."""
        if self.distance_cap is not None:
            self.engine.cap_distances(self.seq, self.distance_cap)
        self.engine.append(self.seq, embeds=torch.cat([*self.deferred, *rows]))
        self.deferred = []

    def transcribe_chunk(self, audio: np.ndarray, start_s: float, sample_rate: int = SAMPLE_RATE, *,
                         encoded: EncodedChunk) -> Segment | None:
        """Append one chunk (<= 30 s) and its transcript to the context; None if it holds no words.
        ``encoded``: the chunk's embeddings and draft, computed by the caller (``SpeechModel.encode_chunks``,
        the one encoder call, batched over chunks)."""
        prompt, engine = self.model.prompt, self.engine
        seconds = len(audio) / sample_rate
        draft = encoded.draft
        rescoring = draft is not None and not self.draft_decoding.corrects(draft)
        # rescoring scores readings as the LLM would write them from the audio alone: no draft in its turn
        draft_ids = None if draft is None or rescoring else draft_token_ids(engine.tokenizer, draft.text)
        rows = [engine.embed_tokens(self.pending + prompt.before_audio), encoded.embeds,
                engine.embed_tokens(prompt.after_audio_with(draft_ids))]
        self.stats.chunks += 1
        kept = self.kept_draft(seconds, draft)
        if kept is not None:  # the transcript is prefilled with the next chunk, as its closing tokens are
            self.stats.drafts_kept += 1
            if not rescoring:  # its tokens and end count as accepted proposals
                self.stats.draft_tokens += len(kept) + 1
                self.stats.accepted_tokens += len(kept) + 1
            if len(self.deferred) < self.defer_kept:
                self.deferred.append(torch.cat(rows))
            else:
                self._append(rows)
            return self._finish(kept, kept + prompt.after_transcript, start_s, seconds)
        self._append(rows)
        if rescoring:
            picked = self._picked_reading(seconds, draft)
            if picked is not None:  # prefilled with the next chunk, as the turn's closing tokens are
                return self._finish(picked, picked + prompt.after_transcript, start_s, seconds)
        proposal, confidences = [], None
        if draft is not None and not rescoring:
            proposal, confidences = draft_proposal(engine.tokenizer, draft, prompt.end_of_turn)
        before = self.seq.num_tokens
        tokens = self._generate(seconds, GREEDY, proposal, confidences)
        if loop_start(tokens, self.loop) is not None or repetitive(self._text(tokens), self.loop):
            self.stats.loops_cut += 1
            # drop the loop, and re-append the prompt's last token to get its next-token logits back
            engine.truncate(self.seq, before - 1)
            engine.append(self.seq, token_ids=prompt.after_audio_with(draft_ids)[-1:])
            tokens = self._generate(seconds, RETRY_SAMPLING)
            retry_cut = loop_start(tokens, self.loop)
            if retry_cut is not None:
                engine.truncate(self.seq, before + retry_cut)
                tokens = tokens[:retry_cut]
        elif len(tokens) >= token_budget(seconds, self.loop):
            self.stats.budget_stops += 1
        return self._finish(tokens, list(prompt.after_transcript), start_s, seconds)

    def _finish(self, tokens: list[int], pending: list[int], start_s: float,
                seconds: float) -> Segment | None:
        """Count the chunk's transcript; ``pending``: what the next chunk prefills before its audio."""
        self.pending = pending
        self.stats.text_tokens += len(tokens)
        text = self._text(tokens)
        return Segment(start_s, start_s + seconds, text) if text else None

    def _text(self, tokens: list[int]) -> str:
        return self.engine.tokenizer.decode(tokens, skip_special_tokens=True).strip()
