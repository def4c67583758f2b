"""CPU speed of ``asr transcribe`` beside faster-whisper base int8, in one process, on the same audio.

    python -m eval.bench_cpu --emulate-avx2          # as on a CPU without AVX-512 or native bf16
    python -m eval.bench_cpu                         # this CPU as it is

Runs the embedded speech model through the pipeline ``asr transcribe`` uses (``TranscribeOptions``
defaults: the dtype and threads ``asr.llm.cpu_defaults`` picks for this CPU) and faster-whisper
(``WhisperModel``, the embedded Whisper base CTranslate2 directory, int8, beam 5, English) on:

1. short utterances: the first ``--utterances`` of the manifest, one at a time;
2. one ~``--long-minutes`` recording: consecutive utterances joined by 0.5 s pauses (``eval.wer``).

Each system is warmed up on one utterance first (its first-call cost is reported apart). Reported:
real-time factors (compute seconds / audio seconds) of both and their ratio, WER of both, the
embedded model's time per stage (``eval.stage_clock``), its LLM seconds per chunk in the long
recording's first and last ten minutes (flat when late chunks cost what early ones did), model load
times, one projection-sized matmul in float32 and bf16 (what the dtype choice rests on), and start-up:
the wall time of ``asr transcribe`` of a ~5 s file in a fresh process (to its exit, its text written) and of
``asr --help``. ``--emulate-avx2`` restarts the script with torch's kernels, oneDNN, MKL and
CTranslate2 limited to AVX2 (``EMULATE_AVX2``); the JSON records CPU model, capability and that
environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asr.speech.audio import SAMPLE_RATE

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev" / "manifest.jsonl"
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "eval" / "results"
EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2", "CT2_FORCE_CPU_ISA": "AVX2"}
GROWTH_WINDOW_S = 600.0
"""The first and last stretch of the long recording whose LLM seconds per chunk are compared."""
STARTUP_SECONDS = (4.0, 6.0)  # the start-up file: the first manifest utterance this long


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=DEV, help="dev manifest (default: %(default)s)")
    parser.add_argument("--utterances", type=int, default=20, help="short utterances timed (default: 20)")
    parser.add_argument("--long-minutes", type=float, default=5.0,
                        help="length of the long recording (0: none; default: 5)")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="limit torch, oneDNN, MKL and CTranslate2 to AVX2 (restarts the script)")
    parser.add_argument("--dtype", default=None, help="the embedded model's --dtype (default: as asr picks)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: as asr picks)")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default: eval/results/bench_cpu_{avx2,native}.json)")
    return parser.parse_args(argv)


def emulate_avx2(module: str) -> None:
    """Unless ``EMULATE_AVX2`` is in force, run ``python -m module`` again with it set (same arguments):
    the limits must be in place before torch loads."""
    if any(os.environ.get(key) != value for key, value in EMULATE_AVX2.items()):
        os.environ.update(EMULATE_AVX2)
        os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])


def cpu_record() -> dict:
    """CPU model, torch's capability, native bf16 and the ISA limits in force."""
    import torch

    from asr.llm.cpu_defaults import native_bf16

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cpus": os.cpu_count(), "capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(), "isa_limits": {key: os.environ.get(key) for key in EMULATE_AVX2},
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def matmul_milliseconds(repeats: int = 50) -> dict[str, float]:
    """Milliseconds of one [64, 576] x [576, 1536] matmul (a SmolLM2 projection over 64 prefill tokens)
    per dtype: the measurement behind ``asr.llm.cpu_defaults``' choice."""
    import torch

    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(64, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        for _ in range(3):
            a @ b
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        times[str(dtype).removeprefix("torch.")] = round((time.perf_counter() - started) / repeats * 1e3, 3)
    return times


def startup(audio: Path, options: list[str]) -> dict:
    """Wall seconds of ``asr transcribe AUDIO`` in a fresh process (to its exit, its txt written) and of
    ``asr --help`` (the interpreter, the command modules and their imports)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "app.cli", "--help"], check=True, capture_output=True, cwd=REPO)
    help_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "app.cli", "transcribe", str(audio), "--output", out, *options],
                       check=True, capture_output=True, cwd=REPO)
        seconds = time.perf_counter() - started
        text = (Path(out) / f"{audio.stem}.txt").read_text().strip()
    return {"file": str(audio), "command_seconds": round(seconds, 2), "help_seconds":
            round(help_seconds, 2), "text": text}


def timed_run(transcribe, items) -> dict:
    """Transcribe every item: audio and compute seconds, real-time factor, WER over all of them."""
    from asr.normalize import error_rates

    audio_seconds = compute_seconds = 0.0
    hypotheses = []
    for item in items:
        audio = item.load()
        started = time.perf_counter()
        hypotheses.append(transcribe(audio))
        compute_seconds += time.perf_counter() - started
        audio_seconds += len(audio) / SAMPLE_RATE
    wer, _ = error_rates([item.text for item in items], hypotheses)
    return {"audio_seconds": round(audio_seconds, 2), "seconds": round(compute_seconds, 2),
            "rtf": round(compute_seconds / audio_seconds, 4), "wer": round(wer, 4)}


def chunk_time_growth(chunk_seconds: list[tuple[float, float]], duration: float,
                      window: float = GROWTH_WINDOW_S) -> dict:
    """Mean seconds of LLM work per chunk among the chunks starting in the first and in the last
    ``window`` seconds of a ``duration``-second recording (``chunk_seconds``: (start s, seconds) per
    chunk, ``TranscriptStats``), and last over first (1.0: late chunks cost what early ones did)."""
    window = min(window, duration / 2)
    first = [seconds for start, seconds in chunk_seconds if start < window]
    last = [seconds for start, seconds in chunk_seconds if start >= duration - window]
    first_mean, last_mean = float(np.mean(first)), float(np.mean(last))
    return {"window_s": window, "first_chunks": len(first), "last_chunks": len(last),
            "first_chunk_seconds": round(first_mean, 4), "last_chunk_seconds": round(last_mean, 4),
            "last_over_first": round(last_mean / first_mean, 3)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.emulate_avx2:
        emulate_avx2("eval.bench_cpu")
    from eval.stage_clock import StageClock
    from eval.wer import build_items

    utterances = build_items(args.manifest, 0, args.utterances + 1)
    warmup, short = utterances[0], utterances[1:]
    long = build_items(args.manifest, args.long_minutes, None)[:1] if args.long_minutes else []
    cli_options = [*(["--dtype", args.dtype] if args.dtype else []),
                   *(["--threads", str(args.threads)] if args.threads else [])]
    given = argv if argv is not None else sys.argv[1:]
    record = {"command": " ".join(["python -m eval.bench_cpu", *given]),
              "load_average_before": os.getloadavg()[0]}  # other work on the machine skews every figure
    if not args.no_startup:  # first, alone: a cold process as a user starts it
        rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
        five = next(row for row in rows if STARTUP_SECONDS[0] <= row["duration_s"] <= STARTUP_SECONDS[1])
        record["startup"] = startup(args.manifest.parent / five["audio"], cli_options)

    started = time.perf_counter()
    from asr.speech.pipeline import TranscribeOptions, load_transcriber

    options = TranscribeOptions(device="cpu", dtype=args.dtype, threads=args.threads)
    transcriber = load_transcriber(None, options)
    load_seconds = {"embedded": round(time.perf_counter() - started, 2)}
    record["machine"] = cpu_record()
    record["matmul_ms"] = matmul_milliseconds()
    int8_weights = transcriber.options.engine_config().int8_weights
    record["embedded_dtype"] = "int8" if int8_weights else str(transcriber.model.dtype).removeprefix("torch.")

    started = time.perf_counter()
    from faster_whisper import WhisperModel

    from asr.speech.whisper_weights import faster_whisper_dir

    whisper = WhisperModel(str(faster_whisper_dir()), device="cpu", compute_type="int8",
                           cpu_threads=record["machine"]["threads"])
    load_seconds["faster_whisper"] = round(time.perf_counter() - started, 2)
    transcripts = []  # the embedded model's last transcript, for its per-chunk times

    def embedded_text(audio: np.ndarray) -> str:
        transcripts[:] = [transcriber.transcribe(audio)]
        return transcripts[0].text

    systems = {
        "embedded": embedded_text,
        "faster_whisper": lambda audio: " ".join(
            segment.text.strip() for segment in whisper.transcribe(audio, language="en", beam_size=5)[0]),
    }
    record["load_seconds"] = load_seconds
    record["first_call_seconds"] = {name: timed_run(run, [warmup])["seconds"]
                                    for name, run in systems.items()}
    for name, items in (("short", short), ("long", long)):
        if not items:
            continue
        with StageClock() as clock:
            embedded = timed_run(systems["embedded"], items)
        baseline = timed_run(systems["faster_whisper"], items)
        record[name] = {"items": len(items), "embedded": embedded, "faster_whisper": baseline,
                        "rtf_ratio": round(embedded["rtf"] / baseline["rtf"], 2),
                        "embedded_stage_seconds": clock.breakdown(embedded["seconds"])}
        if name == "long":
            record[name]["chunk_time_growth"] = chunk_time_growth(transcripts[0].stats.chunk_seconds,
                                                                  transcripts[0].duration)
    record["load_average_after"] = os.getloadavg()[0]
    output = args.output or RESULTS / f"bench_cpu_{'avx2' if args.emulate_avx2 else 'native'}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print_table(record)
    print(f"wrote {output}")


def print_table(record: dict) -> None:
    machine = record["machine"]
    print(f"{machine['cpu']}, {machine['threads']} threads, capability {machine['capability']}, native bf16 "
          f"{machine['native_bf16']}, embedded dtype {record['embedded_dtype']}, load average "
          f"{record['load_average_before']:.1f} before, {record['load_average_after']:.1f} after")
    print(f"{'set':<8} {'audio s':>8} {'embedded RTF':>13} {'faster-whisper RTF':>19} {'ratio':>6} "
          f"{'WER emb':>8} {'WER fw':>7}")
    for name in ("short", "long"):
        if name in record:
            row = record[name]
            print(f"{name:<8} {row['embedded']['audio_seconds']:>8.1f} {row['embedded']['rtf']:>13.3f} "
                  f"{row['faster_whisper']['rtf']:>19.3f} {row['rtf_ratio']:>6.2f} "
                  f"{100 * row['embedded']['wer']:>7.1f}% {100 * row['faster_whisper']['wer']:>6.1f}%")
    if "chunk_time_growth" in record.get("long", {}):
        growth = record["long"]["chunk_time_growth"]
        print(f"long: LLM seconds per chunk, first {growth['window_s']:.0f} s "
              f"{growth['first_chunk_seconds']:.3f}, last {growth['last_chunk_seconds']:.3f}, "
              f"last/first {growth['last_over_first']:.2f}")
    for name in ("short", "long"):
        if name in record:
            stages = record[name]["embedded_stage_seconds"]
            total = sum(stages.values())
            print(f"{name} stages (s, share): " + ", ".join(
                f"{stage} {seconds:.1f} ({100 * seconds / total:.0f}%)" for stage, seconds in stages.items()))
    print(f"matmul [64, 576] x [576, 1536] ms: {record['matmul_ms']}")
    print(f"load s: {record['load_seconds']}, first call s: {record['first_call_seconds']}")
    if "startup" in record:
        print(f"start-up: asr transcribe of a {record['startup']['file'].rsplit('/', 1)[-1]} "
              f"{record['startup']['command_seconds']:.1f} s, asr --help "
              f"{record['startup']['help_seconds']:.2f} s")


if __name__ == "__main__":
    main()
