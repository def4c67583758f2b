from asr.speech.repetition import LoopConfig, loop_start, token_budget


def test_detects_a_phrase_loop_and_keeps_one_copy():
    phrase = [5, 6, 7, 8, 9]
    tokens = [1, 2, 3] + phrase * 5
    start = loop_start(tokens)
    assert start == 3 + len(phrase)
    assert tokens[:start] == [1, 2, 3] + phrase


def test_ordinary_text_and_short_repeats_are_not_loops():
    assert loop_start(list(range(100))) is None
    assert loop_start([1, 2, 3, 4, 4, 4]) is None  # "no no no"
    assert loop_start([7, 8] * 3) is None  # three copies: below the threshold


def test_single_token_runs_need_many_copies():
    assert loop_start([3] * 11) is None
    assert loop_start([1] + [3] * 12) == 2


def test_loop_found_only_at_the_end():
    tokens = [4, 5] * 6 + [10, 11, 12]
    assert loop_start(tokens) is None


def test_budget_grows_with_duration():
    config = LoopConfig(tokens_per_second=10, extra_tokens=20)
    assert token_budget(0, config) == 20 and token_budget(30, config) == 320
