"""Helpers of eval/bench_attention.py that run without a GPU."""

from eval.bench_attention import best_overrides


def test_best_overrides_never_mixes_variants_that_set_the_same_constant():
    rows = [dict(variant="base", batch=1, page_size=32, total=50.0),
            dict(variant="scoring.A=1,scoring.B=64", batch=1, page_size=32, total=40.0),
            dict(variant="scoring.A=1,scoring.C=1", batch=1, page_size=32, total=42.0),  # sets A again
            dict(variant="decode.D=8", batch=1, page_size=32, total=45.0),
            dict(variant="decode.E=2", batch=1, page_size=32, total=49.0)]  # within the margin: dropped
    assert best_overrides(rows) == ["scoring.A=1", "scoring.B=64", "decode.D=8"]


def test_best_overrides_weighs_every_swept_shape():
    """A variant faster on average is kept, unless it is slower by more than the margin somewhere."""
    rows = [dict(variant="base", batch=1, page_size=32, total=20.0),
            dict(variant="base", batch=8, page_size=32, total=100.0),
            dict(variant="decode.D=8", batch=1, page_size=32, total=15.0),
            dict(variant="decode.D=8", batch=8, page_size=32, total=98.0),  # geometric mean 0.86: kept
            dict(variant="scoring.A=1", batch=1, page_size=32, total=10.0),
            dict(variant="scoring.A=1", batch=8, page_size=32, total=120.0)]  # 20% slower at B=8: dropped
    assert best_overrides(rows) == ["decode.D=8"]
