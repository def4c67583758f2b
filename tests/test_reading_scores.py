"""eval/reading_scores.py: past min_context each scoring of readings is compared three ways on the same
context, the engine's own answer goes on, and the agreement figures count what they say."""

import pytest

from eval.reading_scores import ScoreComparison, agreement
from tests.test_llm_engine import engine_for, save_tiny_model, token_ids, unisparse


# the 70-token context is prefilled densely either way (as the dense engine does); its readings' 7-node
# tree reaches 77 tokens
@pytest.mark.parametrize("min_context, recorded", [pytest.param(71, 1, id="past-min-context"),
                                                   pytest.param(1000, 0, id="under-min-context")])
def test_scorings_past_min_context_are_compared_and_answered_as_the_engine_would(tmp_path, min_context,
                                                                                   recorded):
    save_tiny_model("llama", tmp_path)
    engine = engine_for(tmp_path, **unisparse(mass=0.01, max_blocks=1, min_context=min_context))
    seq = engine.new_sequence()
    engine.append(seq, token_ids=token_ids(70, seed=9))
    reading = token_ids(5, seed=3)
    candidates = [reading, reading[:2] + token_ids(2, seed=4), token_ids(3, seed=5)]
    expected = engine.score_continuations(seq, candidates)
    with ScoreComparison() as comparison:
        assert engine.score_continuations(seq, candidates) == expected
    assert len(comparison.rows) == recorded
    assert engine.score_continuations(seq, candidates) == expected  # unwrapped again, the context unchanged
    if recorded:
        row = comparison.rows[0]
        assert row["tree"] == pytest.approx(expected) and row["tree"] != pytest.approx(row["dense"], abs=1e-4)
        dense = engine_for(tmp_path)
        dense_seq = dense.new_sequence()
        dense.append(dense_seq, token_ids=token_ids(70, seed=9))
        assert row["dense"] == pytest.approx(dense.score_continuations(dense_seq, candidates), abs=1e-4)


def test_agreement_counts_same_best_readings_and_errors():
    rows = [{"dense": [-1.0, -2.0], "tree": [-1.5, -2.0], "in_turn": [-3.0, -2.0]},
            {"dense": [-4.0, -1.0], "tree": None, "in_turn": [-4.0, -1.0]}]
    assert agreement(rows, "tree") == {"calls": 1, "same_best": 1, "same_best_share": 1.0,
                                       "mean_abs_error": 0.25, "max_abs_error": 0.5}
    assert agreement(rows, "in_turn") == {"calls": 2, "same_best": 1, "same_best_share": 0.5,
                                          "mean_abs_error": 0.5, "max_abs_error": 2.0}
