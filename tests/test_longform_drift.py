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
        "stats": {"rtf": 0.3},
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
