"""Live captions under load: concurrent streams and one long session, through the real server.

1. ``--streams N [N ...]`` (default 1 4 8) clients stream real speech (dev-set utterances joined by
   pauses) at real time, together, to an in-process ``asr serve`` server on loopback (one server per
   N, sized for N streams). Reported per N: p50/p95 latency from the moment a final's last audio
   sample was sent to the moment its caption arrived, the real-time factor of the model worker
   (busy seconds, summed over its threads, / seconds of audio of all streams), the interval between
   one stream's tentative captions (p50/p95), how many streams the worker's calls served on average,
   and the backpressure the clients saw (largest ``lag`` and ``backlog`` of a final).
2. ``--long-minutes M`` (default 30; 0 skips): one session of looped speech per attention mode
   (``--attention unique dense``): the first and last minute at real time, the middle as fast as the
   server takes it (backpressure paces it), then a short silence after which the client waits for
   the final of the middle's last chunk (the backlog of the fast part must not count against the
   last minute); latency of the finals in minute 1 and in minute M, and the process's resident
   memory at the end of minute 1 and at the end.

Per N also where a final's and a tentative caption's time in the model worker went (``job_profile``).

    python -m eval.bench_live --streams 1 4 8 --seconds 60 --long-minutes 30 --emulate-avx2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asr.live.client import stream_audio
from asr.live.server import LiveServer, ServerConfig
from asr.live.session import LiveModel
from asr.live.stream import StreamConfig
from asr.live.worker import FINAL, IDLE, PARTIAL
from asr.speech.audio import SAMPLE_RATE, load_audio
from asr.speech.pipeline import TranscribeOptions
from eval.bench_cpu import emulate_avx2

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev" / "manifest.jsonl"
PAUSE_S = 0.8  # between utterances: an end-of-utterance pause the segmenter cuts at
DRAIN_S = 2.0  # silence before the last real-time minute: the segmenter closes the middle's last chunk
CAUGHT_UP_S = 2.0  # a final ending this close to the middle's end shows the backlog drained
CATCH_UP_LIMIT_S = 1800.0  # the longest wait for it (reported as ``caught_up_wait_s``)


def speech_track(manifest: Path, seconds: float, first: int) -> np.ndarray:
    """Utterances of the manifest from index ``first`` on (wrapping), joined by pauses, ``seconds`` long."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    pieces, total, index = [], 0, first
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
    while total < seconds * SAMPLE_RATE:
        audio = load_audio(manifest.parent / rows[index % len(rows)]["audio"])
        pieces += [audio, pause]
        total += len(audio) + len(pause)
        index += 1
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def overlap(start: float, end: float, calls: list) -> float:
    """Seconds of [start, end] that ``calls`` (``CallRecord``) ran."""
    return sum(max(0.0, min(end, call.ended) - max(start, call.began)) for call in calls)


def job_profile(worker) -> dict:
    """Where a job's time in the worker went, per kind: finals (``final``: every job of final priority,
    a stream's opening and closing included; apart, their Whisper calls, ``final_whisper``, and their
    LLM calls, ``final_llm``, where a final takes the two: none at a code that runs it in one call) and
    tentative captions (``partial``): waiting for its call (p50/p95, and the mean of that wait the
    worker spent on finals, on tentative captions and on idle work, summed over its threads) and inside
    its call until its result came back (p50/p95)."""
    calls = list(worker.calls)
    by_priority = {kind: [c for c in calls if c.priority == kind] for kind in (FINAL, PARTIAL, IDLE)}
    kinds = {"final": lambda job: job.priority == FINAL, "partial": lambda job: job.priority == PARTIAL,
             "final_whisper": lambda job: job.call.endswith(".encode_finals"),
             "final_llm": lambda job: job.call.endswith(".final")}
    profile = {}
    for name, kind in kinds.items():
        jobs = [job for job in worker.jobs_done if kind(job)]
        waits = [job.began - job.submitted for job in jobs]
        inside = [job.answered - job.began for job in jobs]
        profile[name] = {
            "jobs": len(jobs),
            "wait_p50": percentile(waits, 50), "wait_p95": percentile(waits, 95),
            "in_call_p50": percentile(inside, 50), "in_call_p95": percentile(inside, 95),
            "mean_s": float(np.mean([w + i for w, i in zip(waits, inside)])) if jobs else None,
        }
        for other, other_kind in (("finals", FINAL), ("partials", PARTIAL), ("idle", IDLE)):
            behind = [overlap(job.submitted, job.began, by_priority[other_kind]) for job in jobs]
            profile[name][f"mean_wait_behind_{other}"] = float(np.mean(behind)) if jobs else None
    return profile


def resident_mb() -> float:
    """This process's resident memory (VmRSS), MiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


async def run_streams(model: LiveModel, streams: int, args) -> dict:
    config = ServerConfig(
        port=0, max_sessions=streams, stream=StreamConfig(max_seconds=args.seconds + 60)
    )
    server = LiveServer(model, config)
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    tracks = [speech_track(args.manifest, args.seconds, first=7 * i) for i in range(streams)]
    busy_before, began = server.worker.busy_seconds, time.monotonic()
    results = await asyncio.gather(*(stream_audio(url, track, speed=1.0, timeout_s=3600) for track in tracks))
    wall = time.monotonic() - began
    busy = server.worker.busy_seconds - busy_before
    await server.shutdown()
    latencies = [x for r in results for x in r.latencies]
    gaps = []  # seconds between tentative captions of one stream, within one utterance's chunk
    for r in results:
        partials = r.of("partial")
        gaps += [b["received"] - a["received"] for a, b in zip(partials, partials[1:])
                 if a["start"] == b["start"]]
    audio_s = sum(len(t) for t in tracks) / SAMPLE_RATE
    finals = [m for r in results for m in r.of("final")]
    return {
        "streams": streams,
        "seconds_per_stream": args.seconds,
        "finals": len(latencies),
        "latency_mean": float(np.mean(latencies)) if latencies else None,
        "latency_p50": percentile(latencies, 50),
        "latency_p95": percentile(latencies, 95),
        "latency_max": max(latencies) if latencies else None,
        "rtf": busy / audio_s,
        "wall_s": wall,
        "partials": sum(len(r.of("partial")) for r in results),
        "partial_gap_p50": percentile(gaps, 50),
        "partial_gap_p95": percentile(gaps, 95),
        "streams_per_call": float(np.mean([c.sessions for c in server.worker.calls if c.priority != IDLE])),
        "worker_jobs": job_profile(server.worker),
        "busy_finals_s": server.worker.busy_by_priority[FINAL],
        "busy_partials_s": server.worker.busy_by_priority[PARTIAL],
        "busy_context_s": server.worker.busy_by_priority[IDLE],  # prefilling kept finals' context when idle
        "final_lag_max": max((m["lag"] for m in finals), default=None),
        "final_backlog_max": max((m["backlog"] for m in finals), default=None),
        "errors": [m for r in results for m in r.of("error")],
        "audio_captioned_s": sum(m["end"] - m["start"] for m in finals),
    }


async def run_long(model: LiveModel, minutes: float, args) -> dict:
    seconds = minutes * 60
    config = ServerConfig(
        port=0, max_sessions=1, stream=StreamConfig(max_seconds=seconds + DRAIN_S + 60, max_backlog_s=10.0)
    )
    server = LiveServer(model, config)
    await server.start()
    speech = speech_track(args.manifest, seconds, first=0)
    last_minute = len(speech) - 60 * SAMPLE_RATE
    track = np.concatenate(
        [speech[:last_minute], np.zeros(int(DRAIN_S * SAMPLE_RATE), np.float32), speech[last_minute:]]
    )
    drain_end = (last_minute / SAMPLE_RATE) + DRAIN_S

    memory = {}

    def pace(position_s: float) -> float:
        if position_s >= 60 and "minute1_rss_mb" not in memory:
            memory["minute1_rss_mb"] = resident_mb()
        return 1.0 if position_s < 60 or position_s >= last_minute / SAMPLE_RATE else math.inf

    async def catch_up(position_s: float, result) -> None:
        if position_s < drain_end or "caught_up_wait_s" in memory:
            return
        waited = time.monotonic()
        while time.monotonic() - waited < CATCH_UP_LIMIT_S and not any(
            m["end"] >= last_minute / SAMPLE_RATE - CAUGHT_UP_S for m in result.of("final")
        ):
            await asyncio.sleep(0.1)
        memory["caught_up_wait_s"] = time.monotonic() - waited

    began = time.monotonic()
    result = await stream_audio(f"ws://127.0.0.1:{server.port}/ws", track, speed=pace, timeout_s=4 * 3600,
                                before_frame=catch_up)
    wall = time.monotonic() - began
    busy = server.worker.busy_seconds
    memory["end_rss_mb"] = resident_mb()
    await server.shutdown()
    finals = result.of("final")
    first = [lat for m, lat in zip(finals, result.latencies) if m["end"] <= 60]
    last = [lat for m, lat in zip(finals, result.latencies) if m["start"] >= drain_end]
    done = result.of("done")[-1] if result.of("done") else {}
    return {
        "minutes": minutes,
        "finals": len(finals),
        "wall_s": wall,
        "rtf": busy / (len(speech) / SAMPLE_RATE),
        "minute1_latency_p50": percentile(first, 50),
        "minute1_latency_p95": percentile(first, 95),
        "last_minute_latency_p50": percentile(last, 50),
        "last_minute_latency_p95": percentile(last, 95),
        "minute1_finals": len(first),
        "last_minute_finals": len(last),
        **memory,
        "done": done,
    }


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what ``platform`` knows."""
    match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return match.group(1).strip() if match else platform.processor() or "cpu"


def fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 4, 8],
                        help="concurrent real-time streams, one run per count (none: skip)")
    parser.add_argument("--seconds", type=float, default=90.0, help="audio per stream")
    parser.add_argument(
        "--long-minutes", type=float, default=30.0, help="length of the long session (0: skip)"
    )
    parser.add_argument(
        "--attention", nargs="+", default=["unique", "dense"], help="modes of the long session"
    )
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=None,
                        help="model worker threads (default: as the server picks, LiveModel.load)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--manifest", type=Path, default=DEV)
    parser.add_argument("--output", type=Path, default=Path("eval/results"))
    parser.add_argument("--name", default="bench_live", help="JSON file name (without .json)")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="limit torch, oneDNN, MKL and CTranslate2 to AVX2 (restarts the script)")
    args = parser.parse_args()
    if args.emulate_avx2:
        emulate_avx2("eval.bench_live")
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
        "load_average_at_start": os.getloadavg(),  # other processes on the machine inflate latencies
    }
    path = args.output / f"{args.name}.json"

    def save() -> None:  # after every part: a long run stopped midway keeps what it measured
        report["load_average_at_end"] = os.getloadavg()
        args.output.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")

    if args.streams:
        model = LiveModel.load(None, TranscribeOptions(device=args.device, budget_tokens=args.budget),
                               workers=args.workers)
        report["workers"] = model.workers  # worker seconds (RTF, busy_*) are summed over its threads
        report["streams"] = []
        for streams in args.streams:
            report["streams"].append(asyncio.run(run_streams(model, streams, args)))
            save()
        print(
            f"{'streams':>8} {'finals':>7} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'RTF':>6} "
            f"{'partial gap p50/p95 s':>22} {'per call':>9} {'max lag s':>10}"
        )
        for s in report["streams"]:
            gap = f"{fmt(s['partial_gap_p50'])} / {fmt(s['partial_gap_p95'])}"
            print(
                f"{s['streams']:>8} {s['finals']:>7} {fmt(s['latency_p50']):>7} {fmt(s['latency_p95']):>7} "
                f"{fmt(s['latency_max']):>7} {s['rtf']:>6.2f} {gap:>22} {s['streams_per_call']:>9.2f} "
                f"{fmt(s['final_lag_max']):>10}"
            )
        print(f"{'streams':>8} {'job':>8} {'wait p50/p95 s':>15} {'in call p50/p95 s':>18} "
              f"{'mean wait behind finals / partials / idle s':>44}")
        for s in report["streams"]:
            for job, p in s["worker_jobs"].items():
                behind = " / ".join(fmt(p[f"mean_wait_behind_{o}"]) for o in ("finals", "partials", "idle"))
                print(f"{s['streams']:>8} {job:>8} {fmt(p['wait_p50']) + ' / ' + fmt(p['wait_p95']):>15} "
                      f"{fmt(p['in_call_p50']) + ' / ' + fmt(p['in_call_p95']):>18} {behind:>44}")
        del model
    if args.long_minutes:
        report["long"] = {}
        for attention in args.attention:
            model = LiveModel.load(
                None, TranscribeOptions(attention=attention, device=args.device, budget_tokens=args.budget),
                workers=args.workers,
            )
            report["long"][attention] = asyncio.run(run_long(model, args.long_minutes, args))
            save()
            del model
        print(
            f"{'attention':>10} {'min 1 p50':>10} {'min 1 p95':>10} {'last p50':>9} {'last p95':>9} "
            f"{'RTF':>6} {'RSS min 1 / end MiB':>20}"
        )
        for attention, r in report["long"].items():
            rss = f"{r.get('minute1_rss_mb', 0):.0f} / {r['end_rss_mb']:.0f}"
            print(
                f"{attention:>10} {fmt(r['minute1_latency_p50']):>10} {fmt(r['minute1_latency_p95']):>10} "
                f"{fmt(r['last_minute_latency_p50']):>9} {fmt(r['last_minute_latency_p95']):>9} "
                f"{r['rtf']:>6.2f} {rss:>20}"
            )
    save()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
