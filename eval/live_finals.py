"""Final captions of live streams, offline: where a final's worker time goes, and their dev-set WER.

The dev set's utterances are dealt to ``--streams`` streams (utterance i to stream i % N), each cut
into chunks by the live segmenter (``asr.live.vad``) as the server cuts it; the chunks go through
``LiveModel.finals`` in rounds of one chunk per stream, as the model worker batches the finals of
streams waiting together. No server, no real time, no tentative captions: the worker's seconds on
finals only, stage by stage (``eval.stage_clock``), per second of audio, and the WER of the finals
(each utterance's chunks joined) against the references. The model is loaded as the server loads it
(``LiveModel.load``: on a CPU of two threads or more, for two workers of half the threads each), so
the finals are the server's; the calls here run one at a time, on one worker's threads.

    python -m eval.live_finals --streams 1 4 --emulate-avx2 --name live_finals_avx2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from eval.bench_cpu import DEV, RESULTS, cpu_record, emulate_avx2
from eval.stage_clock import StageClock

TRAILING_SILENCE_S = 1.0  # after each utterance: the segmenter's end-of-utterance pause closes it
# the beam search for other readings runs inside the greedy draft's call: timed apart by a second clock
READINGS = {"readings": ("asr.speech.draft", "Ct2Drafter", "_with_alternatives")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="streams, one run per count")
    parser.add_argument("--utterances", type=int, default=None, help="first N dev utterances (default: all)")
    parser.add_argument("--manifest", type=Path, default=DEV)
    parser.add_argument("--dtype", default=None, help="the LLM's dtype (default: as asr picks)")
    parser.add_argument("--workers", type=int, default=None,
                        help="load the model for this many worker threads (default: as the server does)")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="limit torch, oneDNN, MKL and CTranslate2 to AVX2 (restarts the script)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--name", default="live_finals", help="JSON file name (without .json)")
    return parser.parse_args(argv)


def stream_chunks(utterances: list[np.ndarray], sample_rate: int) -> list[tuple[int, float, np.ndarray]]:
    """(utterance index, start s in the stream, audio) of every chunk the live segmenter cuts from
    ``utterances`` [(index, audio)] played one after another, each followed by a pause."""
    from asr.live.vad import StreamSegmenter

    chunks, offset = [], 0
    pause = np.zeros(int(TRAILING_SILENCE_S * sample_rate), np.float32)
    for index, audio in utterances:
        segmenter = StreamSegmenter(sample_rate=sample_rate)
        closed = segmenter.feed(np.concatenate([audio, pause])) + segmenter.flush()
        chunks += [(index, offset + chunk.start / sample_rate, chunk.audio) for chunk in closed]
        offset += (len(audio) + len(pause)) / sample_rate
    return chunks


def run(model, streams: int, rows: list[dict], audios: list[np.ndarray]) -> dict:
    """Every utterance through ``streams`` live decoders of one engine: seconds per stage, WER."""
    from asr.live.session import ChunkRequest
    from asr.normalize import error_rates
    from asr.speech.audio import SAMPLE_RATE

    per_stream = [stream_chunks([(i, audios[i]) for i in range(s, len(audios), streams)], SAMPLE_RATE)
                  for s in range(streams)]
    longest = max(sum(len(audio) for _, _, audio in chunks) for chunks in per_stream) / SAMPLE_RATE
    engine = model.open_engine(streams, longest + 60)
    decoders = [model.open(engine) for _ in range(streams)]
    texts: list[list[str]] = [[] for _ in rows]
    round_seconds = []
    with StageClock() as clock, StageClock(READINGS) as readings:
        for round_index in range(max(len(chunks) for chunks in per_stream)):
            waiting = [(decoder, chunks[round_index]) for decoder, chunks in zip(decoders, per_stream)
                       if round_index < len(chunks)]
            requests = [ChunkRequest(audio, start, decoder) for decoder, (_, start, audio) in waiting]
            began = time.perf_counter()
            captions = [caption for _, caption in sorted(model.finals(requests), key=lambda pair: pair[0])]
            round_seconds.append(time.perf_counter() - began)
            for (_, (index, _, _)), caption in zip(waiting, captions):
                if isinstance(caption, Exception):
                    raise caption
                texts[index].append(caption.text)
    counters = {field: sum(getattr(decoder.session.stats, field) for decoder in decoders)
                for field in ("chunks", "drafts_kept", "readings_changed", "draft_tokens", "accepted_tokens")}
    for decoder in decoders:
        decoder.close()
    audio_seconds = sum(len(audio) for _, _, audio in sum(per_stream, [])) / SAMPLE_RATE
    total = sum(round_seconds)
    stages = clock.breakdown(total)
    stages["draft"] = round(stages["draft"] - readings.seconds.get("readings", 0.0), 3)  # greedy alone
    stages = {**stages, "readings": round(readings.seconds.get("readings", 0.0), 3)}
    wer, cer = error_rates([row["text"] for row in rows], [" ".join(parts) for parts in texts])
    return {"streams": streams, "chunks": sum(len(chunks) for chunks in per_stream),
            "audio_seconds": round(audio_seconds, 2), "seconds": round(total, 2),
            "rtf": round(total / audio_seconds, 4),
            "round_seconds_p50": round(float(np.percentile(round_seconds, 50)), 3),
            "round_seconds_p95": round(float(np.percentile(round_seconds, 95)), 3),
            "stage_seconds": stages,
            "stage_rtf": {stage: round(seconds / audio_seconds, 4) for stage, seconds in stages.items()},
            "wer": round(wer, 4), "cer": round(cer, 4), "session_stats": counters,
            "hypotheses": {row["id"]: " ".join(parts) for row, parts in zip(rows, texts)}}


def manifest_audio(manifest: Path, limit: int) -> tuple[list[dict], list[np.ndarray]]:
    """The first ``limit`` (0: all) rows of ``manifest`` and their audio, [samples] float32 at 16 kHz."""
    from asr.speech.audio import load_audio

    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rows = rows[: limit or None]
    return rows, [load_audio(manifest.parent / row["audio"]) for row in rows]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.emulate_avx2:
        emulate_avx2("eval.live_finals")
    from asr.live.session import LiveModel
    from asr.speech.pipeline import TranscribeOptions

    rows, audios = manifest_audio(args.manifest, args.utterances)
    model = LiveModel.load(None, TranscribeOptions(dtype=args.dtype), workers=args.workers)
    report = {"cpu": cpu_record(), "workers": model.workers, "command": " ".join(sys.argv),
              "load_average_at_start": os.getloadavg(),
              "runs": [run(model, streams, rows, audios) for streams in args.streams]}
    report["load_average_at_end"] = os.getloadavg()
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{args.name}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    stages = list(report["runs"][0]["stage_rtf"])
    print(f"{'streams':>7} {'WER':>6} {'RTF':>6} {'round p50/p95 s':>16} | "
          + " ".join(f"{stage[:9]:>9}" for stage in stages))
    for r in report["runs"]:
        rounds = f"{r['round_seconds_p50']:.2f}/{r['round_seconds_p95']:.2f}"
        print(f"{r['streams']:>7} {r['wer']:>6.2%} {r['rtf']:>6.3f} {rounds:>16} | "
              + " ".join(f"{r['stage_rtf'][s]:>9.4f}" for s in stages))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
