"""Speech corpora for training and evaluation: manifest.jsonl files and LibriSpeech-layout trees.

A manifest is described (count, seconds, audio files missing), checked, or first joined from others
(the lines of each in order, every field kept, audio paths made absolute so the result can live
anywhere; a source may be named more than once) from the command line:

    python -m asr.corpus MANIFEST [--join SOURCE [SOURCE ...]] [--expect COUNT SECONDS]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
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


def join_manifests(out: Path, manifests: Sequence[Path]) -> list[Utterance]:
    """Write ``out`` from the lines of ``manifests`` in order, every field kept and ``audio`` made an
    absolute path (symbolic links resolved); returns what it wrote, read back. Written aside, then
    renamed: a killed run leaves the old file or none."""
    lines = []
    for manifest in manifests:
        for line in manifest.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                row["audio"] = str((manifest.parent / row["audio"]).resolve())
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    partial = out.with_name(out.name + ".partial")
    partial.write_text("".join(lines))
    partial.replace(out)
    return read_manifest(out)


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifest", type=Path, help="manifest to describe (written first with --join)")
    parser.add_argument("--join", nargs="+", type=Path, metavar="SOURCE",
                        help="write MANIFEST from these manifests' lines, in order, audio paths absolute")
    parser.add_argument("--expect", nargs=2, type=float, metavar=("COUNT", "SECONDS"),
                        help="fail unless MANIFEST holds COUNT utterances of SECONDS in all (to the "
                        "millisecond) and every audio file exists")
    args = parser.parse_args()
    rows = join_manifests(args.manifest, args.join) if args.join else read_manifest(args.manifest)
    seconds = round(sum(row.duration for row in rows), 3)
    missing = sum(not row.audio.is_file() for row in rows)
    print(f"{args.manifest}: {len(rows)} utterances, {seconds:.3f} s, {missing} audio files missing")
    if args.expect and ((len(rows), seconds) != (int(args.expect[0]), args.expect[1]) or missing):
        parser.exit(1, f"{args.manifest}: expected {int(args.expect[0])} utterances, {args.expect[1]:.3f} s "
                    "and every audio file present\n")


if __name__ == "__main__":
    main()
