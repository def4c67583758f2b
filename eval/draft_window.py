"""What a short encoder window costs Whisper's drafts: WER and time of the draft of each utterance
encoded in the usual 30-s window against windows only as long as the utterance plus a margin of
silence (``AudioEncoder.draft_short``; CTranslate2 takes them, as whisper.cpp's ``audio_ctx``).

Each dev utterance (<= 30 s, one chunk) is drafted once per window, one at a time (batch 1, as a
lone live stream drafts). Prints a table and writes JSON (per window: WER, CER, mean seconds per
draft, and the drafts).

    python -m eval.draft_window --margins 0 0.5 1 2 --output eval/results/draft_window.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev" / "manifest.jsonl"
PADDED = "30 s (padded)"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path, default=DEV)
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0],
                        help="seconds of silence after the audio in the short windows")
    parser.add_argument("--every", type=int, default=1, help="every n-th utterance")
    parser.add_argument("--output", type=Path, default=Path("eval/results/draft_window.json"))
    args = parser.parse_args()

    from asr.corpus import read_corpus
    from asr.normalize import error_rates
    from asr.speech.encoder import AudioEncoder

    encoder = AudioEncoder.load(None, device="cpu", drafts=True)
    utterances = read_corpus(args.manifest)[:: args.every]
    audios = [utterance.load()[: 30 * 16000] for utterance in utterances]
    references = [utterance.text for utterance in utterances]
    windows: dict[str, float | None] = {PADDED: None, **{f"audio + {m:g} s": m for m in args.margins}}
    rows = []
    for name, margin in windows.items():
        drafts, seconds = [], 0.0
        for audio in tqdm(audios, desc=name):
            began = time.perf_counter()
            drafts += encoder.draft([audio]) if margin is None else encoder.draft_short([audio], margin)
            seconds += time.perf_counter() - began
        wer, cer = error_rates(references, drafts)
        rows.append({"window": name, "margin_s": margin, "wer": wer, "cer": cer,
                     "seconds_per_draft": seconds / len(audios), "drafts": drafts})
    audio_s = sum(len(audio) for audio in audios) / 16000
    print(f"{len(audios)} utterances, {audio_s:.0f} s of audio")
    print(f"{'window':<16} {'WER %':>6} {'CER %':>6} {'s/draft':>8}")
    for row in rows:
        print(f"{row['window']:<16} {100 * row['wer']:>6.2f} {100 * row['cer']:>6.2f} "
              f"{row['seconds_per_draft']:>8.3f}")
    report = {"device": platform.processor() or "cpu",
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "command": " ".join(sys.argv), "utterances": len(audios),
              "audio_seconds": audio_s, "references": references, "windows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
