"""Dataset manifest: one JSON object per line, audio paths relative to the manifest's directory."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class ManifestRow:
    """id: unique utterance id; audio: path relative to the manifest; text: transcript as spoken;
    voice: "family/speaker"; duration: seconds; style: prosody used (rate, pitch, noise); source:
    text source(s) of the sentences."""

    id: str
    audio: str
    text: str
    voice: str
    duration: float
    style: dict = field(default_factory=dict)
    source: str = ""


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> None:
    path.write_text("".join(json.dumps(asdict(row), ensure_ascii=False) + "\n" for row in rows))


def read_manifest(path: Path) -> list[ManifestRow]:
    return [ManifestRow(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
