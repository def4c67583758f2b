import json

import pytest

from asr.errors import AsrError
from asr.transcript import Segment, Transcript, TranscriptStats
from asr.writers import caption_cues, format_timestamp, get_writer

LONG = ("the quick brown fox jumps over the lazy dog " * 6).strip()


def sample():
    return Transcript([Segment(0.0, 2.5, "Hello there."), Segment(3661.25, 3670.0, LONG)], duration=3671.0,
                      skipped=[(2.5, 3661.25, "silence")], stats=STATS)


STATS = TranscriptStats(duration=3671.0, seconds=367.1, rtf=0.1, kv_pages_read=0.25, attention="unique",
                        budget_tokens=2048, chunks=2, loops_cut=0, budget_stops=0, context_tokens=900,
                        text_tokens=40, max_distance=4096, drafts=False, draft_tokens_accepted=0,
                        draft_tokens=0)


def test_timestamps():
    assert format_timestamp(3661.25, ",") == "01:01:01,250"
    assert format_timestamp(59.9996, ".") == "00:01:00.000"


def test_long_segments_split_into_two_line_cues_sharing_the_time():
    cues = caption_cues(sample().segments)
    assert cues[0].text == "Hello there."
    long_cues = cues[1:]
    assert len(long_cues) >= 2
    assert all(
        len(c.text.split("\n")) <= 2 and all(len(line) <= 42 for line in c.text.split("\n"))
        for c in long_cues
    )
    assert long_cues[0].start == 3661.25 and long_cues[-1].end == pytest.approx(3670.0)
    assert " ".join(c.text.replace("\n", " ") for c in long_cues) == LONG


@pytest.mark.parametrize("fmt", ["txt", "json", "srt", "vtt"])
def test_every_format_holds_all_text(fmt, tmp_path):
    path = tmp_path / f"out.{fmt}"
    get_writer(fmt)(sample(), path)
    body = path.read_text()
    flat = " ".join(body.split())
    assert "Hello there." in flat and "lazy dog" in flat
    if fmt == "srt":
        assert body.startswith("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n")
    if fmt == "vtt":
        assert body.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n")
    if fmt == "json":
        data = json.loads(body)
        assert data["skipped"][0]["reason"] == "silence" and data["segments"][1]["start"] == 3661.25
        assert list(data["stats"]) == [
            "duration",
            "seconds",
            "rtf",
            "kv_pages_read",
            "attention",
            "budget_tokens",
            "chunks",
            "loops_cut",
            "budget_stops",
            "context_tokens",
            "text_tokens",
            "max_distance",
            "drafts",
            "draft_tokens_accepted",
            "draft_tokens",
            "prefill",
            "chunk_seconds",
        ]
        assert data["stats"]["rtf"] == 0.1


def test_unknown_format():
    with pytest.raises(AsrError, match="unknown output format"):
        get_writer("docx")
