from asr.speech.repetition import LoopConfig, compression_ratio, loop_start, repetitive, token_budget


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


def test_loop_whose_last_copy_was_cut_short():
    """Generation that hits its token budget stops mid-copy: still a loop."""
    phrase = [5, 6, 7, 8, 9]
    tokens = [1, 2] + phrase * 4 + phrase[:3]
    start = loop_start(tokens)
    assert start == 2 + len(phrase)
    assert loop_start([1, 2] + phrase * 3 + phrase[:1]) is None  # three copies and a token


def test_loop_whose_first_copy_starts_differently():
    """A repeated sentence's first token merges with what precedes it: three exact copies and a
    variant first one still make a loop of four."""
    phrase = [5, 6, 7, 8, 9, 10, 11, 12]
    tokens = [1, 2, 99] + phrase[1:] + phrase * 3
    assert loop_start(tokens) == len(tokens) - 3 * len(phrase) + 1


def test_compression_ratio_flags_varied_repeats_but_not_speech():
    varied = " ".join(['"He is the rider."' if i % 3 else "He is the rider." for i in range(16)])
    speech = ("And so, my fellow Americans, ask not what your country can do for you, ask what you can do "
              "for your country. The invention of movable metal letters in the middle of the fifteenth "
              "century may justly be considered as the invention of the art of printing.")
    assert repetitive(varied) and compression_ratio(varied) > 5
    assert not repetitive(speech) and compression_ratio(speech) < 2
    assert compression_ratio("") == 0.0
