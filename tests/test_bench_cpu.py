"""The CPU benchmark's flatness figure: LLM seconds per chunk early and late in a long recording."""

import pytest

from eval.bench_cpu import chunk_time_growth


def test_chunk_time_growth_compares_the_first_and_last_windows():
    # an hour of 30-s chunks whose cost grows linearly from 1 s to 3 s
    chunks = [(start, 1.0 + 2.0 * start / 3570.0) for start in range(0, 3600, 30)]
    growth = chunk_time_growth(chunks, 3600.0)
    assert growth["first_chunks"] == growth["last_chunks"] == 20
    assert growth["first_chunk_seconds"] == pytest.approx(1.0 + 2.0 * 285 / 3570, abs=1e-4)
    assert growth["last_chunk_seconds"] == pytest.approx(1.0 + 2.0 * 3285 / 3570, abs=1e-4)
    ratio = growth["last_chunk_seconds"] / growth["first_chunk_seconds"]
    assert growth["last_over_first"] == pytest.approx(ratio, abs=1e-3)


def test_chunk_time_growth_halves_the_window_for_short_recordings():
    growth = chunk_time_growth([(0.0, 2.0), (100.0, 2.0), (200.0, 4.0)], 300.0)
    assert growth["window_s"] == 150.0
    assert (growth["first_chunks"], growth["last_chunks"], growth["last_over_first"]) == (2, 1, 2.0)
