"""Transcript writers, one per output format (txt, json, srt, vtt), behind ``get_writer``."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

from asr.errors import AsrError
from asr.transcript import Segment, Transcript

CAPTION_LINE_CHARS = 42  # the common broadcast limit per caption line
CAPTION_LINES = 2


def format_timestamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS<decimal>mmm``."""
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def caption_cues(segments: list[Segment]) -> list[Segment]:
    """Split segments into cues of at most two lines of 42 characters; a long segment's time is
    shared among its cues in proportion to their characters."""
    cues = []
    for seg in segments:
        lines = textwrap.wrap(seg.text.strip(), CAPTION_LINE_CHARS)
        if not lines:
            continue
        groups = ["\n".join(lines[i : i + CAPTION_LINES]) for i in range(0, len(lines), CAPTION_LINES)]
        total = sum(len(g) for g in groups)
        start = seg.start
        for group in groups:
            end = start + (seg.end - seg.start) * len(group) / total
            cues.append(Segment(start, end, group))
            start = end
    return cues


def write_txt(transcript: Transcript, path: Path) -> None:
    path.write_text("\n".join(s.text.strip() for s in transcript.segments if s.text.strip()) + "\n")


def write_json(transcript: Transcript, path: Path) -> None:
    path.write_text(json.dumps(transcript.to_dict(), indent=1, ensure_ascii=False) + "\n")


def write_srt(transcript: Transcript, path: Path) -> None:
    blocks = [
        f"{i}\n{format_timestamp(c.start, ',')} --> {format_timestamp(c.end, ',')}\n{c.text}\n"
        for i, c in enumerate(caption_cues(transcript.segments), 1)
    ]
    path.write_text("\n".join(blocks))


def write_vtt(transcript: Transcript, path: Path) -> None:
    blocks = [
        f"{format_timestamp(c.start, '.')} --> {format_timestamp(c.end, '.')}\n{c.text}\n"
        for c in caption_cues(transcript.segments)
    ]
    path.write_text("WEBVTT\n\n" + "\n".join(blocks))


WRITERS: dict[str, Callable[[Transcript, Path], None]] = {
    "txt": write_txt,
    "json": write_json,
    "srt": write_srt,
    "vtt": write_vtt,
}


def get_writer(fmt: str) -> Callable[[Transcript, Path], None]:
    if fmt not in WRITERS:
        raise AsrError(f"unknown output format {fmt!r}; choose one of {', '.join(WRITERS)}")
    return WRITERS[fmt]
