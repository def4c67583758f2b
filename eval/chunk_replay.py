"""A long recording's LLM work again without Whisper's: the quick real-data check of per-chunk flatness.

``record`` transcribes the recording once through the pipeline ``asr transcribe`` uses and saves what
each chunk handed the LLM (its start and length, and its ``EncodedChunk``: embeddings and draft).
``run`` feeds those chunks to a fresh session of the code checked out now, as the pipeline does
(``LongformSession.transcribe_chunk``), and reports the LLM seconds per chunk in the first and last
ten minutes (``eval.bench_cpu.chunk_time_growth``, the figure ``eval.bench_cpu`` gives for the whole
pipeline), the seconds of each LLM stage there (``eval.stage_clock``), the context lengths and the
WER. It takes the LLM's share of the pipeline's time (an hour: ~6 minutes instead of ~18 with
faster-whisper beside it). Whisper's side is the recording's: a change to the encoder, the drafts
or the segmenter needs a new ``record``.

    python -m eval.chunk_replay record --manifest /work/runs/s12/hour.jsonl --minutes 60 --emulate-avx2 \\
        --chunks hour_chunks.pt
    python -m eval.chunk_replay run hour_chunks.pt --emulate-avx2 --output eval/results/chunk_replay.json
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from eval.bench_cpu import GROWTH_WINDOW_S, chunk_time_growth, cpu_record, emulate_avx2

LLM_STAGES = ("distance cap", "prefill", "gate scoring", "draft check", "decode")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    record = sub.add_parser("record", help="transcribe once and save each chunk's LLM input")
    record.add_argument("--manifest", type=Path, required=True)
    record.add_argument("--minutes", type=float, default=60.0, help="the recording: the first ~M minutes")
    record.add_argument("--chunks", type=Path, required=True, help="where the chunks go (torch.save)")
    run = sub.add_parser("run", help="replay the saved chunks through the LLM")
    run.add_argument("chunks", type=Path)
    run.add_argument("--output", type=Path, default=Path("eval/results/chunk_replay.json"))
    run.add_argument("--profile", type=Path, default=None,
                     help="cProfile the chunks of the first and of the last ten minutes into PROFILE.first "
                          "and PROFILE.last (pstats; their timings then include the profiler's overhead)")
    for command in (record, run):
        command.add_argument("--emulate-avx2", action="store_true",
                             help="torch, oneDNN, MKL and CTranslate2 limited to AVX2 (eval.bench_cpu)")
    return p.parse_args(argv)


def record(args) -> None:
    """Transcribe ``args.minutes`` of the manifest and save every chunk the session is given."""
    import torch

    from asr.speech.longform import LongformSession
    from asr.speech.pipeline import TranscribeOptions, load_transcriber
    from eval.stage_clock import StageClock
    from eval.wer import build_items

    item = build_items(args.manifest, args.minutes, None)[0]
    audio = item.load()
    transcriber = load_transcriber(None, TranscribeOptions(device="cpu"))
    chunks = []  # (start s, samples, EncodedChunk)
    rows = []  # the pipeline's own timing of each chunk, as ``run`` gives the replay's
    transcribe_chunk = LongformSession.transcribe_chunk
    stages = ("encode", "draft", *LLM_STAGES)

    def saved(session, chunk_audio, start_s, sample_rate, *, encoded):
        chunks.append((start_s, len(chunk_audio), encoded))
        before, context = dict(clock.seconds), session.seq.num_tokens
        started = time.perf_counter()
        piece = transcribe_chunk(session, chunk_audio, start_s, sample_rate, encoded=encoded)
        seconds = time.perf_counter() - started
        # encode and draft: the Whisper batch run since the previous chunk (0 for the rest of a batch)
        since = {stage: clock.seconds.get(stage, 0.0) - (rows[-1]["_clock"] if rows else {}).get(stage, 0.0)
                 for stage in ("encode", "draft")}
        rows.append({"start_s": start_s, "context": context, "seconds": round(seconds, 4),
                     "stages": {stage: round(since[stage] if stage in since
                                             else clock.seconds.get(stage, 0.0) - before.get(stage, 0.0), 4)
                                for stage in stages},
                     "rss_mb": round(resident_mb(), 1), "_clock": dict(clock.seconds)})
        return piece

    LongformSession.transcribe_chunk = saved
    try:
        with StageClock() as clock:
            transcript = transcriber.transcribe(audio)
    finally:
        LongformSession.transcribe_chunk = transcribe_chunk
    for row in rows:
        del row["_clock"]
    torch.save({"item": item.id, "reference": item.text, "duration_s": transcript.duration,
                "chunks": chunks, "pipeline_rows": rows, "pipeline_rtf": transcript.stats.rtf,
                "pipeline_text": transcript.text}, args.chunks)
    growth = chunk_time_growth([(row["start_s"], row["seconds"]) for row in rows], transcript.duration)
    print(f"{len(chunks)} chunks of {transcript.duration:.0f} s saved to {args.chunks}; the pipeline's "
          f"LLM seconds per chunk first/last {growth['first_chunk_seconds']:.3f}/"
          f"{growth['last_chunk_seconds']:.3f} (last/first {growth['last_over_first']:.2f}), RTF "
          f"{transcript.stats.rtf:.3f}")


def resident_mb() -> float:
    """The process's resident memory now, in MB (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def replay(args) -> dict:
    """Each saved chunk through a fresh session: its LLM seconds, context and stage seconds."""
    import torch

    from asr.normalize import error_rates
    from asr.speech.pipeline import TranscribeOptions, load_transcriber
    from eval.stage_clock import STAGES, StageClock

    saved = torch.load(args.chunks, weights_only=False)
    transcriber = load_transcriber(None, TranscribeOptions(device="cpu"))
    stages = {stage: STAGES[stage] for stage in LLM_STAGES}
    rows, texts = [], []
    window = min(GROWTH_WINDOW_S, saved["duration_s"] / 2)
    profiles = {"first": cProfile.Profile(), "last": cProfile.Profile()} if args.profile else {}
    with transcriber.open_session(saved["duration_s"]) as session:
        for start_s, samples, encoded in saved["chunks"]:
            context = session.seq.num_tokens
            part = ("first" if start_s < window else "last" if start_s >= saved["duration_s"] - window
                    else None)
            profile = profiles.get(part, contextlib.nullcontext())
            with StageClock(stages) as clock, profile:
                started, started_cpu = time.perf_counter(), time.process_time()
                piece = session.transcribe_chunk(np.zeros(samples, np.float32), start_s, encoded=encoded)
                seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
            rows.append({"start_s": start_s, "context": context, "seconds": round(seconds, 4),
                         "cpu_seconds": round(cpu_seconds, 4),
                         "stages": {stage: round(clock.seconds.get(stage, 0.0), 4) for stage in LLM_STAGES},
                         "rss_mb": round(resident_mb(), 1)})
            if piece is not None:
                texts.append(piece.text)
    for part, profile in profiles.items():
        profile.dump_stats(f"{args.profile}.{part}")
    wer, _ = error_rates([saved["reference"]], [" ".join(texts)])
    growth = chunk_time_growth([(row["start_s"], row["seconds"]) for row in rows], saved["duration_s"])
    # CPU seconds of the process (both threads): less moved than wall seconds by other work on the machine
    cpu_growth = chunk_time_growth([(row["start_s"], row["cpu_seconds"]) for row in rows],
                                   saved["duration_s"])
    window = growth["window_s"]
    windows = {"first": [row for row in rows if row["start_s"] < window],
               "last": [row for row in rows if row["start_s"] >= saved["duration_s"] - window]}
    stage_means = {name: {stage: round(float(np.mean([row["stages"][stage] for row in part])), 4)
                          for stage in LLM_STAGES} for name, part in windows.items()}
    return {"command": " ".join(["python -m eval.chunk_replay", *sys.argv[1:]]), "machine": cpu_record(),
            "chunks_file": str(args.chunks), "item": saved["item"], "duration_s": saved["duration_s"],
            "llm_seconds": round(sum(row["seconds"] for row in rows), 2), "wer": round(wer, 4),
            "chunk_time_growth": growth, "chunk_cpu_time_growth": cpu_growth,
            "load_average": os.getloadavg(), "stage_seconds_per_chunk": stage_means,
            "context_tokens": {name: [part[0]["context"], part[-1]["context"]]
                               for name, part in windows.items()},
            "rows": rows}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.emulate_avx2:
        emulate_avx2("eval.chunk_replay")
    if args.command == "record":
        record(args)
        return
    result = replay(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    growth = result["chunk_time_growth"]
    print(f"LLM seconds per chunk: first {growth['window_s']:.0f} s {growth['first_chunk_seconds']:.3f} "
          f"(contexts {result['context_tokens']['first']}), last {growth['last_chunk_seconds']:.3f} "
          f"(contexts {result['context_tokens']['last']}); last/first {growth['last_over_first']:.2f}; "
          f"LLM {result['llm_seconds']:.0f} s for {result['duration_s']:.0f} s of audio; WER "
          f"{100 * result['wer']:.2f}%")
    cpu_growth = result["chunk_cpu_time_growth"]
    print(f"CPU seconds per chunk: first {cpu_growth['first_chunk_seconds']:.3f}, last "
          f"{cpu_growth['last_chunk_seconds']:.3f}; last/first {cpu_growth['last_over_first']:.2f}")
    for name, stages in result["stage_seconds_per_chunk"].items():
        print(f"  {name}: " + ", ".join(f"{stage} {seconds:.3f}" for stage, seconds in stages.items()))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
