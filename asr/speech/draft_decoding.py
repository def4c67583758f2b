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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from asr.llm.config import SamplingParams
from asr.llm.engine import LLMEngine
from asr.llm.sequence import Sequence
from asr.speech.draft import Draft

# chosen on the dev set, speechocean762 test and held-out Kokoro speech together (BENCHMARKS.md)
DEFAULT_GATE = 0.9
DEFAULT_TOLERANCE = 1.0
DEFAULT_END_TOLERANCE = 5.0


@dataclass(frozen=True)
class DraftDecoding:
    """gate: Whisper's probability of a draft word at or above which its tokens are kept unchecked (0:
    the draft is kept whole; above 1: the LLM checks every token); tolerance: nats by which an unsure
    draft token may trail the LLM's own choice and still be kept (0: the LLM's greedy choice wins);
    end_tolerance: the same where the LLM's choice is to end the transcript; realign_window: draft
    tokens searched ahead for the LLM's correction."""

    gate: float = DEFAULT_GATE
    tolerance: float = DEFAULT_TOLERANCE
    end_tolerance: float = DEFAULT_END_TOLERANCE
    realign_window: int = 3

    def __post_init__(self) -> None:
        if min(self.gate, self.tolerance, self.end_tolerance, self.realign_window) < 0:
            raise ValueError("draft gate, tolerances and realign window must be >= 0")

    def tolerances(self, confidences: list[float]) -> list[float]:
        """Per proposed token, nats by which it may trail the LLM's choice (inf: kept unchecked)."""
        return [math.inf if confidence >= self.gate else self.tolerance for confidence in confidences]

    def keeps_whole(self, confidences: list[float]) -> bool:
        """Whether a draft with these per-token confidences (its end's included) is kept unchecked."""
        return all(confidence >= self.gate for confidence in confidences)


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
        position = realign(proposal, position, own[0], config.realign_window)
    if len(tokens) < params.max_tokens:
        tokens += engine.generate(seq, replace(params, max_tokens=params.max_tokens - len(tokens)))
    return tokens, accepted_count
