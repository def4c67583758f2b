"""Speech corpora for training and evaluation: manifest.jsonl files and LibriSpeech-layout trees."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.errors import AsrError
from asr.speech.audio import SAMPLE_RATE, load_audio


@dataclass(frozen=True)
class Utterance:
    """audio: absolute path; text: reference transcript; duration: seconds (0 if unknown)."""

    audio: Path
    text: str
    duration: float = 0.0

    def load(self, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """[samples] float32 mono at ``sample_rate``."""
        return load_audio(str(self.audio), sample_rate)


def read_manifest(path: Path) -> list[Utterance]:
    """Lines ``{"audio": path relative to the manifest, "text": ..., "duration"|"duration_s": ...}``."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append(
                Utterance(
                    path.parent / row["audio"],
                    row["text"],
                    float(row.get("duration", row.get("duration_s", 0.0))),
                )
            )
        except (json.JSONDecodeError, KeyError) as error:
            raise AsrError(
                f"{path}:{number}: not a manifest line with 'audio' and 'text' ({error})"
            ) from error
    return rows


def read_librispeech(root: Path) -> list[Utterance]:
    """``*.trans.txt`` files (``ID TEXT`` lines) beside ``ID.flac`` files, anywhere under root."""
    rows = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt_id, _, text = line.partition(" ")
            audio = trans.parent / f"{utt_id}.flac"
            if audio.exists():
                rows.append(Utterance(audio, text.strip(), sf.info(str(audio)).duration))
    return rows


def read_corpus(source: str | Path) -> list[Utterance]:
    """A manifest file, a directory holding ``manifest.jsonl``, or a LibriSpeech-layout directory."""
    source = Path(source)
    if source.is_file():
        return read_manifest(source)
    if (source / "manifest.jsonl").is_file():
        return read_manifest(source / "manifest.jsonl")
    rows = read_librispeech(source) if source.is_dir() else []
    if not rows:
        raise AsrError(f"{source}: no manifest.jsonl and no LibriSpeech *.trans.txt files found")
    return rows
