"""Decoding a chunk's transcript against its Whisper draft (``asr.speech.draft``).

The draft's tokens are proposals: the LLM verifies a run of them in one forward pass and keeps the
prefix it accepts (``LLMEngine.accept_proposal``). Where it rejects a draft token it writes its own
token, and the draft is re-aligned after that correction (the draft had a word wrong, one too many,
or one too few), so the next run of proposals goes on from the matching place. With ``tolerance`` 0
the result is exactly the LLM's greedy transcript and the draft only saves decode steps; a positive
tolerance keeps a draft token the LLM finds nearly as likely as its own choice, so the LLM changes
the draft only where it is confident (a lossy speculative acceptance, as Medusa's typical acceptance).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from asr.llm.config import SamplingParams
from asr.llm.engine import LLMEngine
from asr.llm.sequence import Sequence

DEFAULT_TOLERANCE = 1.0  # chosen on held-out speechocean762 test and Kokoro speech (BENCHMARKS.md)


@dataclass(frozen=True)
class DraftDecoding:
    """tolerance: nats by which a draft token may trail the LLM's own choice and still be kept (0: exact
    greedy decoding); realign_window: draft tokens searched ahead for the LLM's correction."""

    tolerance: float = DEFAULT_TOLERANCE
    realign_window: int = 3

    def __post_init__(self) -> None:
        if self.tolerance < 0 or self.realign_window < 0:
            raise ValueError("draft tolerance and realign window must be >= 0")


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
    engine: LLMEngine, seq: Sequence, proposal: list[int], params: SamplingParams, config: DraftDecoding
) -> tuple[list[int], int]:
    """A greedy transcript (at most ``params.max_tokens``, ending at a stop token) of what ``seq`` holds,
    taking ``proposal`` (the draft's ids and the end of turn) where the LLM accepts it. Returns the
    transcript's tokens and how many proposed tokens were accepted (the end of turn included)."""
    tokens: list[int] = []
    position, accepted_count = 0, 0
    while position < len(proposal) and len(tokens) < params.max_tokens:
        run = proposal[position : position + params.max_tokens - len(tokens)]
        accepted, stopped = engine.accept_proposal(seq, run, params.stop_token_ids, config.tolerance)
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
