"""What a short encoder window costs: WER and time of Whisper's draft of each utterance (and with
``--llm`` of the speech LLM's transcript from the same encoder output) in the usual 30-s window
against windows only as long as the utterance plus a margin of silence
(``AudioEncoder.window_samples``; CTranslate2 takes them, as whisper.cpp's ``audio_ctx``).

Each dev utterance (<= 30 s, one chunk) is encoded and drafted once per window, one at a time
(batch 1, as a lone live stream), and with ``--llm`` decoded as the first chunk of a fresh session
(the live server's options). Prints a table and writes JSON (per window: WER, CER, mean seconds per
encode and draft and per LLM decode, and the texts).

    python -m eval.draft_window --margins 0 1 2 3 --llm --output eval/results/draft_window.json
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--llm", action="store_true", help="also score the speech LLM's transcripts")
    parser.add_argument("--output", type=Path, default=Path("eval/results/draft_window.json"))
    args = parser.parse_args()

    from asr.corpus import read_corpus
    from asr.normalize import error_rates
    from asr.speech.audio import SAMPLE_RATE
    from asr.speech.encoder import CHUNK_SAMPLES
    from asr.speech.pipeline import TranscribeOptions, load_transcriber
    from eval.bench_live import cpu_model

    options = TranscribeOptions(device="cpu")
    model = load_transcriber(None, options).model
    engine = model.open_engine(options.engine_config(), expected_seconds=30)
    utterances = read_corpus(args.manifest)[:: args.every]
    audios = [utterance.load()[:CHUNK_SAMPLES] for utterance in utterances]
    references = [utterance.text for utterance in utterances]
    windows: dict[str, float | None] = {PADDED: None, **{f"audio + {m:g} s": m for m in args.margins}}
    rows = []
    for name, margin in windows.items():
        drafts, transcripts, draft_seconds, llm_seconds = [], [], 0.0, 0.0
        for audio in tqdm(audios, desc=name):
            began = time.perf_counter()
            encoded = model.encode_chunks([audio], margin)[0]
            draft_seconds += time.perf_counter() - began
            drafts.append(encoded.draft.text)
            if args.llm:
                began = time.perf_counter()
                with model.open_session(engine, options.loop, options.distance_cap(),
                                        options.draft_decoding()) as session:
                    segment = session.transcribe_chunk(audio, 0.0, encoded=encoded)
                llm_seconds += time.perf_counter() - began
                transcripts.append(segment.text if segment else "")
        row = {"window": name, "margin_s": margin, "seconds_per_draft": draft_seconds / len(audios),
               **dict(zip(("wer", "cer"), error_rates(references, drafts))), "drafts": drafts}
        if args.llm:
            row.update(zip(("llm_wer", "llm_cer"), error_rates(references, transcripts)),
                       llm_seconds=llm_seconds / len(audios), transcripts=transcripts)
        rows.append(row)
    audio_s = sum(len(audio) for audio in audios) / SAMPLE_RATE
    print(f"{len(audios)} utterances, {audio_s:.0f} s of audio")
    print(f"{'window':<16} {'draft WER %':>11} {'CER %':>6} {'s/draft':>8} {'LLM WER %':>10} {'s/LLM':>6}")
    for row in rows:
        llm = f"{100 * row['llm_wer']:>10.2f} {row['llm_seconds']:>6.3f}" if args.llm else ""
        print(f"{row['window']:<16} {100 * row['wer']:>11.2f} {100 * row['cer']:>6.2f} "
              f"{row['seconds_per_draft']:>8.3f} {llm}")
    report = {"device": cpu_model(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "command": " ".join(sys.argv), "utterances": len(audios),
              "audio_seconds": audio_s, "references": references, "windows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
