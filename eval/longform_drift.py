"""Does a very long transcription stay on the audio to its end? Build a long recording from
manifests with known utterance times, transcribe it (``asr transcribe --format json``), then score
it window by window: a transcript whose timestamps drift, or whose text degrades late in a long
context, shows as rising WER in the last windows.

    python -m eval.longform_drift build --manifest ../shared/data/speech_dev/manifest.jsonl \\
        --manifest .cache/tts_v3/manifest.jsonl:7480 --minutes 60 --output /tmp/hour
    asr transcribe /tmp/hour/recording.flac --format json --output /tmp/hour/out
    python -m eval.longform_drift score /tmp/hour/out/recording.json /tmp/hour/spans.json --window 10 \\
        --output eval/results/longform_drift

``build`` writes ``recording.flac`` (utterances in manifest order, 0.5 s apart) and ``spans.json``
(start/end seconds and reference text per utterance). ``score`` gives each segment to the window
holding its midpoint and each reference utterance to the window holding its own, and prints WER
per window (table, JSON and PNG) with the mean seconds of LLM work per chunk (``chunk_seconds`` in the
transcript's stats: flat when a chunk's cost does not grow with the context), that time in the last
window over the first, and the real-time factor; the last segments are listed beside the references
they overlap. ``eval.bench_flat`` is the fast proxy of the per-chunk time (one chunk per context).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.corpus import read_manifest
from asr.normalize import error_rates
from asr.speech.audio import SAMPLE_RATE
from eval.line_plot import line_plot

GAP_S = 0.5


def build(manifests: list[str], minutes: float, output: Path) -> None:
    """manifests: ``PATH`` or ``PATH:FIRST_ROW``; utterances are taken in order until ``minutes``."""
    from asr.speech.audio import load_audio

    utterances = []
    for spec in manifests:
        path, _, first = spec.partition(":")
        utterances += read_manifest(Path(path))[int(first or 0):]
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    pieces, spans, cursor = [], [], 0.0
    for utt in utterances:
        if cursor >= minutes * 60:
            break
        audio = load_audio(str(utt.audio), SAMPLE_RATE)
        pieces += [audio, gap]
        spans.append(
            {"start": round(cursor, 3), "end": round(cursor + len(audio) / SAMPLE_RATE, 3), "text": utt.text}
        )
        cursor += len(audio) / SAMPLE_RATE + GAP_S
    output.mkdir(parents=True, exist_ok=True)
    sf.write(output / "recording.flac", np.concatenate(pieces), SAMPLE_RATE)
    (output / "spans.json").write_text(json.dumps(spans, indent=0))
    print(f"{len(spans)} utterances, {cursor / 60:.1f} min -> {output / 'recording.flac'}")


def score(transcript_path: Path, spans_path: Path, window_min: float, output: Path, last: int) -> None:
    transcript = json.loads(transcript_path.read_text())
    spans = json.loads(spans_path.read_text())
    window_s = window_min * 60
    windows = int(np.ceil(transcript["duration"] / window_s))
    rows = []
    for index in range(windows):
        lo, hi = index * window_s, (index + 1) * window_s
        refs = [s["text"] for s in spans if lo <= (s["start"] + s["end"]) / 2 < hi]
        hyps = [g["text"] for g in transcript["segments"] if lo <= (g["start"] + g["end"]) / 2 < hi]
        wer, cer = error_rates([" ".join(refs)], [" ".join(hyps)]) if refs else (float("nan"), float("nan"))
        chunk_seconds = transcript["stats"].get("chunk_seconds", [])
        times = [seconds for start, seconds in chunk_seconds if lo <= start < hi]
        rows.append({"window": index, "start_min": lo / 60, "end_min": min(hi, transcript["duration"]) / 60,
                     "utterances": len(refs), "segments": len(hyps), "wer": wer, "cer": cer,
                     "chunks": len(times), "chunk_seconds": float(np.mean(times)) if times else float("nan")})
    print(f"{'window (min)':>14} {'utts':>5} {'segs':>5} {'WER':>7} {'CER':>7} {'s/chunk':>8}")
    for r in rows:
        print(f"{r['start_min']:6.1f}-{r['end_min']:6.1f} {r['utterances']:5d} {r['segments']:5d} "
              f"{100 * r['wer']:6.1f}% {100 * r['cer']:6.1f}% {r['chunk_seconds']:8.2f}")
    flatness = chunk_time_growth(rows, transcript["stats"])
    print(f"\nLLM s/chunk, last window / first: {flatness['last_over_first']:.2f} "
          f"({flatness['last_chunk_seconds']:.2f} / {flatness['first_chunk_seconds']:.2f}); "
          f"RTF {flatness['rtf']:.3f}")
    print(f"\nlast {last} segments against the references they overlap:")
    for seg in transcript["segments"][len(transcript["segments"]) - last:]:
        overlapping = [s["text"] for s in spans if s["start"] < seg["end"] and s["end"] > seg["start"]]
        print(
            f"[{seg['start']:8.1f}-{seg['end']:8.1f}] HYP {seg['text']}\n{'':20} REF "
            f"{' | '.join(overlapping)}"
        )
    output.mkdir(parents=True, exist_ok=True)
    result = {"transcript": str(transcript_path), "window_minutes": window_min, "stats": transcript["stats"],
              "skipped_seconds": sum(s["end"] - s["start"] for s in transcript["skipped"]), "windows": rows,
              "chunk_time_growth": flatness}
    (output / "longform_drift.json").write_text(json.dumps(result, indent=1))
    plot(rows, output / "longform_drift.png")


def chunk_time_growth(rows: list[dict], stats: dict) -> dict:
    """The mean LLM seconds per chunk of the first and the last window holding chunks, their ratio (1.0:
    a chunk late in the recording costs what an early one did) and the run's real-time factor."""
    timed = [r for r in rows if r["chunks"]]
    first, last = (timed[0]["chunk_seconds"], timed[-1]["chunk_seconds"]) if timed else (float("nan"),) * 2
    return {"first_chunk_seconds": first, "last_chunk_seconds": last, "last_over_first": last / first,
            "rtf": stats.get("rtf", float("nan"))}


def plot(rows: list[dict], path: Path) -> None:
    middles = [(r["start_min"] + r["end_min"]) / 2 for r in rows]
    line_plot([(middles, [100 * r["wer"] for r in rows], "o-", "WER"),
               (middles, [100 * r["cer"] for r in rows], "s--", "CER")],
              path, "position in the recording (minutes)", "error rate (%)",
              "Long-form transcription, one decoder context", figsize=(6, 3.5))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="build a long recording with known utterance times")
    make.add_argument(
        "--manifest", action="append", required=True, help="PATH or PATH:FIRST_ROW (repeatable)"
    )
    make.add_argument("--minutes", type=float, default=60)
    make.add_argument("--output", type=Path, required=True)
    check = commands.add_parser("score", help="WER per time window of a long transcript")
    check.add_argument("transcript", type=Path, help="asr transcribe --format json output")
    check.add_argument("spans", type=Path, help="spans.json written by build")
    check.add_argument("--window", type=float, default=10, help="window length in minutes")
    check.add_argument("--last", type=int, default=5, help="final segments to print beside their references")
    check.add_argument("--output", type=Path, default=Path("outputs/longform_drift"))
    args = parser.parse_args()
    if args.command == "build":
        build(args.manifest, args.minutes, args.output)
    else:
        score(args.transcript, args.spans, args.window, args.output, args.last)


if __name__ == "__main__":
    main()
