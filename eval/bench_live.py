"""Live captions under load: concurrent streams and one long session, through the real server.

1. ``--streams N`` (default 4) clients stream real speech (dev-set utterances joined by pauses) at
   real time, together, to an in-process ``asr serve`` server on loopback. Reported: p50/p95 latency
   from the moment a final's last audio sample was sent to the moment its caption arrived, the
   real-time factor of the model worker (busy seconds / seconds of audio of all streams), and how
   often tentative captions came.
2. ``--long-minutes M`` (default 30; 0 skips): one session of looped speech per attention mode
   (``--attention unique dense``): the first and last minute at real time, the middle as fast as the
   server takes it (backpressure paces it); latency of the finals in minute 1 and in minute M.

    python eval/bench_live.py --streams 4 --seconds 90 --long-minutes 30 --output eval/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asr.live.client import stream_audio
from asr.live.server import LiveServer, ServerConfig
from asr.live.session import LiveModel
from asr.live.stream import StreamConfig
from asr.speech.audio import SAMPLE_RATE, load_audio
from asr.speech.pipeline import TranscribeOptions

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev" / "manifest.jsonl"
PAUSE_S = 0.8  # between utterances: an end-of-utterance pause the segmenter cuts at
DRAIN_S = 15.0  # silence before the last real-time minute, so backlog from the fast part drains


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


async def run_streams(model: LiveModel, args) -> dict:
    config = ServerConfig(
        port=0, max_sessions=args.streams, stream=StreamConfig(max_seconds=args.seconds + 60)
    )
    server = LiveServer(model, config)
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    tracks = [speech_track(args.manifest, args.seconds, first=7 * i) for i in range(args.streams)]
    busy_before, began = server.worker.busy_seconds, time.monotonic()
    results = await asyncio.gather(*(stream_audio(url, track, speed=1.0, timeout_s=3600) for track in tracks))
    wall = time.monotonic() - began
    busy = server.worker.busy_seconds - busy_before
    await server.shutdown()
    latencies = [x for r in results for x in r.latencies]
    gaps = []  # seconds between tentative captions of one stream
    for r in results:
        times = [m["received"] for m in r.of("partial")]
        gaps += list(np.diff(times))
    audio_s = sum(len(t) for t in tracks) / SAMPLE_RATE
    return {
        "streams": args.streams,
        "seconds_per_stream": args.seconds,
        "finals": len(latencies),
        "latency_p50": percentile(latencies, 50),
        "latency_p95": percentile(latencies, 95),
        "latency_max": max(latencies) if latencies else None,
        "rtf": busy / audio_s,
        "wall_s": wall,
        "partials": sum(len(r.of("partial")) for r in results),
        "partial_gap_p50": percentile(gaps, 50),
        "final_lag_max": max((m["lag"] for r in results for m in r.of("final")), default=None),
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

    def pace(position_s: float) -> float:
        return 1.0 if position_s < 60 or position_s >= last_minute / SAMPLE_RATE else math.inf

    began = time.monotonic()
    result = await stream_audio(f"ws://127.0.0.1:{server.port}/ws", track, speed=pace, timeout_s=4 * 3600)
    wall = time.monotonic() - began
    busy = server.worker.busy_seconds
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
        "done": done,
    }


def fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=4, help="concurrent real-time streams (0: skip)")
    parser.add_argument("--seconds", type=float, default=90.0, help="audio per stream")
    parser.add_argument(
        "--long-minutes", type=float, default=30.0, help="length of the long session (0: skip)"
    )
    parser.add_argument(
        "--attention", nargs="+", default=["unique", "dense"], help="modes of the long session"
    )
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--device", default=None)
    parser.add_argument("--manifest", type=Path, default=DEV)
    parser.add_argument("--output", type=Path, default=Path("eval/results"))
    parser.add_argument("--name", default="bench_live", help="JSON file name (without .json)")
    args = parser.parse_args()
    report = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }
    if args.streams:
        model = LiveModel.load(None, TranscribeOptions(device=args.device, budget_tokens=args.budget))
        report["streams"] = asyncio.run(run_streams(model, args))
        s = report["streams"]
        print(
            f"{'streams':>8} {'finals':>7} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'RTF':>6} "
            f"{'partial gap s':>14}"
        )
        print(
            f"{s['streams']:>8} {s['finals']:>7} {fmt(s['latency_p50']):>7} {fmt(s['latency_p95']):>7} "
            f"{fmt(s['latency_max']):>7} {s['rtf']:>6.2f} {fmt(s['partial_gap_p50']):>14}"
        )
        del model
    if args.long_minutes:
        report["long"] = {}
        for attention in args.attention:
            model = LiveModel.load(
                None, TranscribeOptions(attention=attention, device=args.device, budget_tokens=args.budget)
            )
            report["long"][attention] = asyncio.run(run_long(model, args.long_minutes, args))
            del model
        print(
            f"{'attention':>10} {'min 1 p50':>10} {'min 1 p95':>10} {'last p50':>9} {'last p95':>9} "
            f"{'RTF':>6}"
        )
        for attention, r in report["long"].items():
            print(
                f"{attention:>10} {fmt(r['minute1_latency_p50']):>10} {fmt(r['minute1_latency_p95']):>10} "
                f"{fmt(r['last_minute_latency_p50']):>9} {fmt(r['last_minute_latency_p95']):>9} "
                f"{r['rtf']:>6.2f}"
            )
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{args.name}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
