"""Decoding a chunk's transcript against its Whisper draft (``asr.speech.draft``).

The draft's tokens are proposals: the LLM verifies a run of them in one forward pass and keeps the
prefix it accepts (``LLMEngine.accept_proposal``). Where it rejects a draft token it writes its own
token, and the draft is re-aligned after that correction (the draft had a word wrong, one too many,
or one too few), so the next run of proposals goes on from the matching place.

Whisper's own confidence gates the LLM first (as speech-LLM verifiers of a first pass do): a draft
token in a word Whisper was at least ``gate`` sure of is kept unchecked, so the LLM can change only
words Whisper was unsure of, and only where it prefers its own token by more than ``tolerance`` nats;
ending the transcript before the draft is used up needs ``end_tolerance`` nats. A draft sure
everywhere (its end included) is kept whole, and the LLM decodes nothing for it. With ``gate`` above 1
and ``tolerance`` 0 the result is exactly the LLM's greedy transcript and the draft only saves decode
steps; with ``gate`` 0 it is the draft.

Correcting token by token helps where Whisper guessed much of a chunk (accented speech), and harms
clear speech, where the LLM's own words replace right ones. So by default (``rescore``) a chunk that
is unsure but not mostly guessed is arbitrated instead: the LLM (reading the audio, no draft in its
context) scores the draft and Whisper's other beam readings, and the best of Whisper's and its
log-probabilities combined wins (``LongformSession``), so the LLM only chooses among words Whisper heard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from asr.llm.config import SamplingParams
from asr.llm.engine import LLMEngine
from asr.llm.sequence import Sequence
from asr.speech.draft import AlternativeSearch, Draft

# chosen on the dev set, speechocean762 test and held-out Kokoro speech together (BENCHMARKS.md)
DEFAULT_GATE = 0.9
DEFAULT_TOLERANCE = 1.0
DEFAULT_END_TOLERANCE = 5.0
DEFAULT_LLM_WEIGHT = 0.2
DEFAULT_ALTERNATIVES = 5
DEFAULT_CORRECT_SHARE = 0.45
UNSURE_WORD = 0.5  # a word Whisper gave less than this is a guess


@dataclass(frozen=True)
class DraftDecoding:
    """gate: Whisper's probability of a draft word at or above which its tokens are kept unchecked (0:
    the draft is kept whole; above 1: the LLM checks every token); tolerance: nats by which an unsure
    draft token may trail the LLM's own choice and still be kept (0: the LLM's greedy choice wins);
    end_tolerance: the same where the LLM's choice is to end the transcript; realign_window: draft
    tokens searched ahead for the LLM's correction; rescore: instead of correcting tokens, pick each
    unsure chunk's transcript among the draft and Whisper's ``alternatives`` best beam readings by
    Whisper's log-probability plus ``llm_weight`` times the LLM's (the LLM writes no word Whisper did
    not read), except in chunks where Whisper guessed more than ``correct_share`` of the words, which
    the LLM corrects (``corrects``)."""

    gate: float = DEFAULT_GATE
    tolerance: float = DEFAULT_TOLERANCE
    end_tolerance: float = DEFAULT_END_TOLERANCE
    realign_window: int = 3
    rescore: bool = True
    llm_weight: float = DEFAULT_LLM_WEIGHT
    alternatives: int = DEFAULT_ALTERNATIVES
    correct_share: float = DEFAULT_CORRECT_SHARE

    def corrects(self, draft: Draft) -> bool:
        """Whether the LLM corrects ``draft`` token by token rather than picking among Whisper's readings:
        when rescoring is off, or where Whisper guessed more than ``correct_share`` of its words (hard,
        often accented speech, where Whisper's readings all miss and the LLM's own words help)."""
        return not self.rescore or draft.unsure_share(UNSURE_WORD) > self.correct_share

    def search(self) -> AlternativeSearch | None:
        """What the drafter searches for beside each unsure draft (None: no other readings); none for
        the drafts the LLM corrects (``corrects``)."""
        if not self.rescore or not self.alternatives:
            return None
        return AlternativeSearch(self.gate, self.alternatives, max_unsure_share=self.correct_share,
                                 unsure_word=UNSURE_WORD)

    def __post_init__(self) -> None:
        if min(self.gate, self.tolerance, self.end_tolerance, self.realign_window, self.llm_weight,
               self.alternatives, self.correct_share) < 0:
            raise ValueError("draft gate, tolerances, realign window, LLM weight and alternatives: >= 0")

    def tolerances(self, confidences: list[float]) -> list[float]:
        """Per proposed token, nats by which it may trail the LLM's choice (inf: kept unchecked)."""
        return [math.inf if confidence >= self.gate else self.tolerance for confidence in confidences]


def draft_proposal(tokenizer, draft: Draft, end_of_turn: int) -> tuple[list[int], list[float]]:
    """The draft as the LLM's transcript would spell it, then the end of the turn: its token ids and,
    per token, Whisper's confidence (``Draft.span_probability`` of the characters it spells; the end's
    for the end of the turn). tokenizer: the LLM's (a fast tokenizer: it gives character offsets)."""
    encoding = tokenizer(draft.text, add_special_tokens=False, return_offsets_mapping=True)
    confidences = [draft.span_probability(start, end) for start, end in encoding.offset_mapping]
    return list(encoding.input_ids) + [end_of_turn], confidences + [draft.end_probability]


def realign(proposal: list[int], position: int, token: int, window: int) -> int:
    """Where the draft goes on after the LLM wrote ``token`` in place of ``proposal[position]``: past
    the same token met at ``position`` or up to ``window`` tokens ahead (the draft had tokens too
    many), or at ``position - 1`` (the LLM inserted a token before it); else past ``position`` (a
    token replaced)."""
    ahead = range(position, min(len(proposal), position + window + 1))
    for index in [*ahead[:1], position - 1, *ahead[1:]]:
        if 0 <= index < len(proposal) and proposal[index] == token:
            return index + 1
    return position + 1


def decode_with_draft(
    engine: LLMEngine, seq: Sequence, proposal: list[int], params: SamplingParams, config: DraftDecoding,
    confidences: list[float] | None = None,
) -> tuple[list[int], int]:
    """A greedy transcript (at most ``params.max_tokens``, ending at a stop token) of what ``seq`` holds,
    taking ``proposal`` (the draft's ids and the end of turn) where the LLM accepts it or Whisper was
    sure of it (``confidences``, per proposed token; None: unsure everywhere). Returns the transcript's
    tokens and how many proposed tokens were accepted (the end of turn included)."""
    tolerances = config.tolerances([0.0] * len(proposal) if confidences is None else confidences)
    tokens: list[int] = []
    position, accepted_count = 0, 0
    while position < len(proposal) and len(tokens) < params.max_tokens:
        end = position + params.max_tokens - len(tokens)
        accepted, stopped = engine.accept_proposal(seq, proposal[position:end], params.stop_token_ids,
                                                   tolerances[position:end], config.end_tolerance)
        tokens += accepted
        accepted_count += len(accepted) + stopped
        position += len(accepted)
        if stopped or len(tokens) >= params.max_tokens:
            return tokens, accepted_count
        own = engine.generate(seq, replace(params, max_tokens=1))  # the LLM's correction
        if not own:
            return tokens, accepted_count  # it ended the transcript here
        tokens += own
        # where the draft goes on: never past a token Whisper was sure of, unless the LLM wrote that one
        sure = [math.isinf(allowed) for allowed in tolerances[position + 1 :]] + [True]
        position = realign(proposal, position, own[0], min(config.realign_window, sure.index(True) + 1))
    if len(tokens) < params.max_tokens:
        tokens += engine.generate(seq, replace(params, max_tokens=params.max_tokens - len(tokens)))
    return tokens, accepted_count
