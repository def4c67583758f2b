"""Whisper's confidence gates the LLM's corrections: word probabilities from Whisper's tokens, casing
merged, per proposed LLM token; a sure draft token is kept whatever the LLM prefers, an unsure one is
the LLM's to change, and ending early needs the end tolerance."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from asr.llm.config import SamplingParams
from asr.speech.draft import Draft, DraftWord, draft_from_tokens, spelling_classes
from asr.speech.draft_decoding import DraftDecoding, decode_with_draft, draft_proposal
from tests.test_llm_engine import VOCAB, engine_for, save_tiny_model, token_ids

# Whisper-like byte-level tokens: a leading space starts a word; "é" is split over two tokens
TOKEN_BYTES = {1: b" Hello", 2: b",", 3: b" wor", 4: b"ld", 5: b".", 6: b" caf", 7: b"\xc3", 8: b"\xa9"}


def decode(ids: list[int]) -> str:
    return b"".join(TOKEN_BYTES[i] for i in ids).decode("utf-8", errors="replace")


def test_words_take_their_least_probable_spelling_token():
    probabilities = [0.9, 0.1, 0.8, 0.6, 0.2, 0.95, 0.7, 0.99]
    draft = draft_from_tokens([1, 2, 3, 4, 5, 6, 7, 8], probabilities, 0.97, decode)
    assert draft.text == "Hello, world. café"
    words = [(draft.text[w.start : w.end], w.probability) for w in draft.words]
    # punctuation never makes a word unsure; the two tokens of "é" count as one piece of "café"
    assert words == [("Hello,", 0.9), ("world.", 0.6), ("café", 0.7)]
    assert draft.end_probability == 0.97


def test_a_span_takes_the_words_it_touches_else_the_next_word_or_the_end():
    draft = Draft("ab cd", (DraftWord(0, 2, 0.9), DraftWord(3, 5, 0.4)), end_probability=0.8)
    assert draft.span_probability(0, 2) == 0.9
    assert draft.span_probability(1, 4) == 0.4  # touches both: the least sure
    assert draft.span_probability(2, 3) == 0.4  # the space between: the next word's
    assert draft.span_probability(5, 6) == 0.8  # past the last word: the end's


def test_casings_of_one_spelling_share_a_class():
    spellings = {0: " You", 1: " you", 2: " YOU", 3: " your", 4: "\ufffd"}
    classes = spelling_classes(lambda ids: spellings[ids[0]], first_special=5)
    assert classes[0] == classes[1] == classes[2] != classes[3]
    assert classes[4] == 4 and classes[5] == 5 and len(classes) == 6


def test_proposal_confidences_follow_the_llm_tokens_characters():
    draft = Draft("ab cd", (DraftWord(0, 2, 0.9), DraftWord(3, 5, 0.4)), end_probability=0.7)
    spans = [(0, 1), (1, 2), (2, 5)]  # "a", "b", " cd"

    def tokenizer(text, add_special_tokens=False, return_offsets_mapping=False):
        return SimpleNamespace(input_ids=[10, 11, 12], offset_mapping=spans)

    ids, confidences = draft_proposal(tokenizer, draft, end_of_turn=99)
    assert ids == [10, 11, 12, 99] and confidences == [0.9, 0.9, 0.4, 0.7]


def test_the_gate_splits_tokens_into_unchecked_and_checked():
    gate = DraftDecoding(gate=0.8, tolerance=1.5)
    assert gate.tolerances([0.9, 0.8, 0.5]) == [math.inf, math.inf, 1.5]
    draft = Draft("ab cd", (DraftWord(0, 2, 0.9), DraftWord(3, 5, 0.8)), end_probability=0.95)
    assert draft.sure(0.8) and not draft.sure(0.81)
    assert not Draft("ab", (DraftWord(0, 2, 1.0),), end_probability=0.5).sure(0.8)
    assert Draft("").sure(1.0) and not Draft("").sure(1.01)
    with pytest.raises(ValueError):
        DraftDecoding(gate=-0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    save_tiny_model("llama", directory)
    return directory


def _decode(directory, prompt, proposal, confidences, gate, tolerance=0.0):
    engine = engine_for(directory)
    seq = engine.new_sequence()
    engine.append(seq, token_ids=prompt)
    params = SamplingParams(max_tokens=len(proposal), ignore_eos=True)
    decoding = DraftDecoding(gate=gate, tolerance=tolerance)
    tokens, _ = decode_with_draft(engine, seq, proposal, params, decoding, confidences)
    assert seq.num_tokens == engine.cache.length(seq.seq_id) == len(prompt) + len(tokens)
    return tokens


def test_a_sure_draft_is_kept_where_the_llm_would_write_otherwise(tiny):
    prompt, draft = token_ids(11, seed=5), token_ids(8, seed=77)  # a random draft: the LLM disagrees
    greedy = _decode(tiny, prompt, draft, None, gate=1.01)
    assert greedy != draft
    assert _decode(tiny, prompt, draft, [0.95] * 8, gate=0.9) == draft


def test_unsure_tokens_are_the_llms_and_sure_ones_stay(tiny):
    prompt = token_ids(11, seed=5)
    greedy = _decode(tiny, prompt, token_ids(8, seed=77), None, gate=1.01)
    wrong = list(greedy)
    wrong[2] = (wrong[2] + 7) % (VOCAB - 1)
    assert _decode(tiny, prompt, wrong, [0.0] * 8, gate=0.9) == greedy  # unsure everywhere: greedy
    sure_at_wrong = [0.0, 0.0, 0.99] + [0.0] * 5
    assert _decode(tiny, prompt, wrong, sure_at_wrong, gate=0.9)[:3] == wrong[:3]


def test_ending_early_needs_the_end_tolerance(tiny):
    """The LLM's own choice is made the stop token: a proposed token that trails it by ``gap`` nats is
    rejected under tolerance 0 unless the end tolerance allows that gap."""

    def prompted():
        engine = engine_for(tiny)
        seq = engine.new_sequence()
        engine.append(seq, token_ids=token_ids(11, seed=5))
        return engine, seq

    engine, seq = prompted()
    logprobs = seq.next_logits.float().log_softmax(-1)
    stop, proposed = (int(token) for token in logprobs.argsort(descending=True)[:2])
    gap = float(logprobs[stop] - logprobs[proposed])
    assert engine.accept_proposal(seq, [proposed], [stop], 0.0, gap - 1e-3) == ([], False)
    assert _accepts(prompted(), [proposed], [stop], gap + 1e-3) == ([proposed], False)
    # where the LLM's choice is no stop token, the end tolerance does not help
    assert _accepts(prompted(), [proposed], [], gap + 1.0) == ([], False)


def _accepts(engine_and_seq, proposal, stops, stop_tolerance):
    engine, seq = engine_and_seq
    return engine.accept_proposal(seq, proposal, stops, 0.0, stop_tolerance)


def test_class_probability_counts_every_casing():
    from asr.speech.draft import _class_probability

    logits = np.log(np.array([0.5, 0.25, 0.125, 0.125], dtype=np.float32))
    classes = np.array([0, 0, 2, 3])
    assert _class_probability(logits, 1, classes) == pytest.approx(0.75)
    assert _class_probability(logits, 3, classes) == pytest.approx(0.125)


def test_sure_words_kept_and_guessed_share():
    draft = Draft("Then Moses said,", (DraftWord(0, 4, 0.3), DraftWord(5, 10, 0.95), DraftWord(11, 16, 0.4)))
    assert draft.keeps_sure_words("the moses said", 0.9)
    assert draft.keeps_sure_words("Then, MOSES was", 0.9)  # case and punctuation do not count
    assert not draft.keeps_sure_words("the most said", 0.9)
    assert draft.unsure_share(0.5) == pytest.approx(2 / 3) and Draft("").unsure_share(0.5) == 0.0
    assert DraftDecoding(correct_share=0.5).corrects(draft)
    assert not DraftDecoding(correct_share=0.7).corrects(draft)
    assert DraftDecoding(rescore=False, correct_share=0.7).corrects(draft)


@pytest.mark.parametrize("overrides, trees", [
    pytest.param({}, 1, id="one-token-tree"),
    pytest.param({"prefill_chunk": 2}, 0, id="in-turn"),  # the tree does not fit one forward
])
def test_scored_continuations_are_their_summed_logprobs_and_leave_the_sequence_as_it_was(tiny, overrides,
                                                                                         trees):
    engine = engine_for(tiny, **overrides)
    forwards = {"tree": 0}
    prefill_tree = engine.runner.prefill_tree

    def counted(*args):
        forwards["tree"] += 1
        return prefill_tree(*args)

    engine.runner.prefill_tree = counted
    seq = engine.new_sequence()
    engine.append(seq, token_ids=token_ids(11, seed=5))
    before, logits_before = seq.num_tokens, seq.next_logits.clone()
    reading = token_ids(6, seed=3)
    # unrelated readings, and readings sharing a prefix with one another (prefilled once, then branched)
    candidates = [token_ids(4, seed=1), token_ids(1, seed=2), reading, reading[:3] + token_ids(2, seed=4),
                  reading[:2], reading + token_ids(1, seed=6), reading[:3] + token_ids(3, seed=7), []]
    scores = engine.score_continuations(seq, candidates)
    assert forwards["tree"] == trees
    assert scores[-1] == 0.0
    assert seq.num_tokens == engine.cache.length(seq.seq_id) == before
    assert torch.equal(seq.next_logits, logits_before)
    for candidate, score in zip(candidates, scores):
        step = engine_for(tiny)
        stepped = step.new_sequence()
        step.append(stepped, token_ids=token_ids(11, seed=5))
        expected = 0.0
        for token in candidate:
            expected += float(stepped.next_logits.float().log_softmax(-1)[token])
            step.append(stepped, token_ids=[token])
        assert score == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("probabilities, wanted", [
    pytest.param((0.95, 0.99, 0.97), False, id="sure-kept-whole"),
    pytest.param((0.3, 0.95, 0.97), True, id="one-guess-readings-arbitrate"),
    pytest.param((0.3, 0.2, 0.97), False, id="mostly-guessed-the-llm-corrects"),
])
def test_readings_are_searched_only_for_drafts_the_llm_arbitrates(probabilities, wanted):
    """Whisper's beam search runs for unsure drafts the LLM picks readings for, not for sure drafts
    (kept whole) nor mostly guessed ones (the LLM corrects them token by token, reading no readings)."""
    words = tuple(DraftWord(start, start + 2, p) for start, p in zip((0, 3, 6), probabilities))
    draft = Draft("aa bb cc", words, end_probability=0.99)
    decoding = DraftDecoding()
    assert decoding.search().wants(draft) == wanted
    assert wanted == (not draft.sure(decoding.gate) and not decoding.corrects(draft))
    assert not decoding.search().wants(Draft(""))


@pytest.mark.parametrize("against", ["gate", "correct_share"])
def test_gate_plot_draws_one_line_per_other_setting(tmp_path, monkeypatch, against):
    """``eval.draft_gate plot`` puts the swept setting on the x axis and keeps a line per other setting."""
    from eval import draft_gate

    rows = [{"decoding": "whisper draft", "wer": 0.3, "cer": 0.2}]
    rows += [{"decoding": "rescore", "gate": gate, "llm_weight": 0.3, "correct_share": share,
              "tolerance": 1.0, "end_tolerance": 5.0, "kept_share": 0.1, "wer": 0.2 + gate / 10 + share / 10,
              "cer": 0.1}
             for gate in (0.5, 0.9) for share in (0.25, 0.5, 0.75)]
    result = tmp_path / "set.json"
    result.write_text(json.dumps({"manifest": str(tmp_path / "set" / "m.jsonl"), "rows": rows}))
    drawn = {}
    monkeypatch.setattr(draft_gate, "line_plot", lambda series, *args, **kwargs: drawn.update(series=series))
    draft_gate.plot(SimpleNamespace(results=[result], names={}, against=against, output=tmp_path / "p.png"))
    lines = [series for series in drawn["series"] if not series[3].startswith("Whisper draft")]
    other = {"gate": 3, "correct_share": 2}[against]  # lines: one per value of the setting not swept
    assert len(lines) == other
    swept = {"gate": [0.5, 0.9], "correct_share": [0.25, 0.5, 0.75]}[against]
    assert all(xs == swept for xs, *_ in lines)
