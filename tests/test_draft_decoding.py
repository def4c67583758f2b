"""Decoding against a draft: exact greedy at tolerance 0, the draft itself at a large tolerance, and the
draft re-aligned after each correction."""

from __future__ import annotations

import pytest

from asr.llm.config import SamplingParams
from asr.speech.draft_decoding import DraftDecoding, decode_with_draft, realign
from tests.test_llm_engine import VOCAB, engine_for, save_tiny_model, token_ids


@pytest.mark.parametrize(
    ("position", "token", "expected"),
    [
        pytest.param(2, 12, 3, id="agrees-with-the-draft"),
        pytest.param(2, 14, 5, id="draft-had-two-tokens-too-many"),
        pytest.param(2, 11, 2, id="llm-inserted-a-token-before"),
        pytest.param(2, 99, 3, id="llm-replaced-the-token"),
        pytest.param(0, 99, 1, id="replaced-at-the-start"),
    ],
)
def test_realign_finds_where_the_draft_goes_on(position, token, expected):
    draft = [10, 11, 12, 13, 14, 15, 16, 17]
    assert realign(draft, position, token, window=3) == expected


def test_realign_looks_no_further_than_its_window():
    draft = [10, 11, 12, 13, 14, 15, 16, 17]
    assert realign(draft, 1, 16, window=3) == 2  # 16 sits 5 ahead: a replacement, not a skip
    assert realign(draft, 1, 16, window=5) == 7


@pytest.fixture()
def tiny(tmp_path):
    save_tiny_model("llama", tmp_path)
    return tmp_path


def _greedy(directory, prompt, max_tokens):
    engine = engine_for(directory)
    return engine.generate_batch([prompt], SamplingParams(max_tokens=max_tokens, ignore_eos=True))[0]


def _decode(directory, prompt, proposal, max_tokens, tolerance):
    engine = engine_for(directory)
    seq = engine.new_sequence()
    engine.append(seq, token_ids=prompt)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    tokens, accepted = decode_with_draft(engine, seq, proposal, params, DraftDecoding(tolerance=tolerance))
    assert seq.num_tokens == engine.cache.length(seq.seq_id) == len(prompt) + len(tokens)
    return tokens, accepted


@pytest.mark.parametrize(
    "wrong", [[], [1], [0, 3], [2, 3, 4]], ids=["right", "one-wrong", "two-wrong", "run-wrong"]
)
def test_tolerance_zero_gives_the_greedy_transcript_whatever_the_draft(tiny, wrong):
    prompt = token_ids(11, seed=5)
    greedy = _greedy(tiny, prompt, 10)
    draft = list(greedy[:8])
    for index in wrong:
        draft[index] = (draft[index] + 7) % (VOCAB - 1)
    tokens, accepted = _decode(tiny, prompt, draft, 10, tolerance=0.0)
    assert tokens == greedy
    assert accepted <= 8 - len(wrong)  # a rejected draft token is never counted as kept


def test_a_large_tolerance_keeps_the_draft(tiny):
    prompt = token_ids(11, seed=5)
    draft = token_ids(6, seed=77)
    tokens, accepted = _decode(tiny, prompt, draft, 6, tolerance=1e9)
    assert tokens == draft and accepted == 6
