"""Helpers of eval/bench_attention.py that run without a GPU."""

from eval.bench_attention import best_overrides


def test_best_overrides_never_mixes_variants_that_set_the_same_constant():
    rows = [dict(variant="base", page_size=32, total=50.0),
            dict(variant="scoring.A=1,scoring.B=64", page_size=32, total=40.0),
            dict(variant="scoring.A=1,scoring.C=1", page_size=32, total=42.0),  # sets A again: dropped
            dict(variant="decode.D=8", page_size=32, total=45.0),
            dict(variant="decode.E=2", page_size=32, total=49.0)]  # within the margin: dropped
    assert best_overrides(rows) == ["scoring.A=1", "scoring.B=64", "decode.D=8"]
