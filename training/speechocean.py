"""speechocean762 (real read English, Mandarin L1 speakers, about half children; CC BY 4.0) as manifests.

The corpus keeps Kaldi-style lists (``{train,test}/text``: ``ID WORDS``, ``wav.scp``: ``ID PATH``) and
16 kHz WAV files. This writes one manifest per half (``train/manifest.jsonl``, ``test/manifest.jsonl``)
with the audio re-encoded (Opus halves the bytes that travel to a GPU; FLAC is lossless). Transcripts
are upper case without punctuation; they are written in sentence case with a full stop, the style the
model writes, so training on them does not teach shouting.

    python -m training.speechocean SPEECHOCEAN_DIR OUT_DIR [--codec opus|flac]

SPEECHOCEAN_DIR: a checkout of the public repository jimbozhang/speechocean762 (``WAVE/``, ``train/``,
``test/``). Train on ``train``; ``test`` is a second real-speech validation set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

HALVES = ("train", "test")
SUBTYPES = {"opus": ("OGG", "OPUS", ".ogg"), "flac": ("FLAC", "PCM_16", ".flac")}


def sentence_case(words: str) -> str:
    """'MARK IS GOING TO SEE ELEPHANT' -> 'Mark is going to see elephant.' (the pronoun I stays
    upper case)."""
    tokens = [word.lower() for word in words.split()]
    if not tokens:
        return ""
    tokens = ["I" + token[1:] if token == "i" or token.startswith("i'") else token for token in tokens]
    text = " ".join(tokens)
    return text[0].upper() + text[1:] + "."


def kaldi_list(path: Path) -> dict[str, str]:
    """``ID VALUE`` lines -> {ID: VALUE}."""
    pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {pair[0]: pair[1].strip() if len(pair) > 1 else "" for pair in pairs}


def convert_half(root: Path, half: str, out: Path, codec: str) -> int:
    """Write ``out/half/manifest.jsonl`` and its audio; returns the utterance count. Resumable: audio
    already written is kept."""
    fmt, subtype, suffix = SUBTYPES[codec]
    texts, wavs = kaldi_list(root / half / "text"), kaldi_list(root / half / "wav.scp")
    (out / half / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for utt_id in tqdm(sorted(texts), desc=half, unit="utt"):
        target = out / half / "audio" / f"{utt_id}{suffix}"
        if not target.exists():
            audio, rate = sf.read(str(root / wavs[utt_id]), dtype="float32")
            partial = target.with_suffix(".part")
            sf.write(str(partial), audio, rate, format=fmt, subtype=subtype)
            partial.rename(target)
        duration = sf.info(str(target)).duration
        lines.append(
            json.dumps(
                {
                    "audio": f"audio/{target.name}",
                    "text": sentence_case(texts[utt_id]),
                    "duration": round(duration, 3),
                    "id": utt_id,
                }
            )
        )
    (out / half / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="checkout of jimbozhang/speechocean762")
    parser.add_argument("out", type=Path)
    parser.add_argument("--codec", choices=sorted(SUBTYPES), default="opus")
    parser.add_argument("--halves", nargs="+", choices=HALVES, default=list(HALVES))
    args = parser.parse_args()
    for half in args.halves:
        print(half, convert_half(args.root, half, args.out, args.codec), "utterances")


if __name__ == "__main__":
    main()
