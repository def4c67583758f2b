"""eval/longform_drift.py: window-by-window scoring catches transcripts that drift off the audio."""

import json

from eval.longform_drift import score

SPANS = [
    {"start": 0, "end": 50, "text": "the first one"},
    {"start": 70, "end": 110, "text": "a second line"},
    {"start": 130, "end": 170, "text": "now the third"},
    {"start": 190, "end": 230, "text": "and the last"},
]


def _score(tmp_path, segments):
    transcript = {
        "duration": 240,
        "segments": segments,
        "skipped": [{"start": 50, "end": 70, "reason": "silence"}],
        "stats": {"rtf": 0.3, "chunk_seconds": [[10, 1.0], [80, 3.0], [140, 2.0], [200, 4.0]]},
    }
    (tmp_path / "t.json").write_text(json.dumps(transcript))
    (tmp_path / "spans.json").write_text(json.dumps(SPANS))
    score(tmp_path / "t.json", tmp_path / "spans.json", 2.0, tmp_path / "out", last=2)
    return json.loads((tmp_path / "out" / "longform_drift.json").read_text())


def test_aligned_transcript_scores_zero_in_every_window(tmp_path):
    result = _score(tmp_path, [dict(s) for s in SPANS])
    assert [w["wer"] for w in result["windows"]] == [0.0, 0.0]
    assert result["skipped_seconds"] == 20
    assert (tmp_path / "out" / "longform_drift.png").exists()


def test_late_drift_shows_in_the_window_it_leaves(tmp_path):
    drifted = [dict(s) for s in SPANS]
    drifted[1] = {"start": 125, "end": 165, "text": "a second line"}  # stamped a minute late
    windows = _score(tmp_path, drifted)["windows"]
    assert windows[0]["wer"] > 0.3 and windows[1]["wer"] > 0.3


def test_chunk_time_growth_compares_the_last_window_with_the_first(tmp_path):
    result = _score(tmp_path, [dict(s) for s in SPANS])
    assert [w["chunk_seconds"] for w in result["windows"]] == [2.0, 3.0]
    assert result["chunk_time_growth"] == {"first_chunk_seconds": 2.0, "last_chunk_seconds": 3.0,
                                           "last_over_first": 1.5, "rtf": 0.3}
