"""The live service's scheduling alone: real streams through the real server, the model replaced by
one whose calls cost fixed, modelled times (the worker thread sleeps them), so what the segmenter,
the streams and the worker decide can be compared between codes on a machine whose CPU is busy
with other work (a sleeping worker needs no cores; timings of the real model do).

Costs (``--final-base``, ``--final-per-s``, ``--draft-base``, ``--draft-per-stream``,
``--draft-per-s``; defaults from session 14's four streams on 2 emulated-AVX2 cores: a final about
0.2 s of worker time per second of its chunk, one batched round of four streams' tentative drafts
about 0.5 s): a final ``base + per_s * chunk seconds``, ``--final-whisper-share`` of it in its batched
Whisper call and the rest in its LLM call (one at a time); a batched draft call ``base + per_stream *
drafts + per_s * seconds of open audio drafted``. ``--workers``: worker threads (default 1; the costs
are then those of a call on its share of the cores).

    python -m eval.live_schedule --streams 4 --seconds 60 --name live_schedule_CODE

Reported as ``eval.bench_live`` reports streams (latency p50/p95 from a final's last sample sent to
its caption, partial interval, worker seconds on finals and tentative captions), plus the calls made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from asr.live.session import Caption
from asr.speech.audio import SAMPLE_RATE
from eval.bench_live import DEV, run_streams


class ModelledCosts:
    """A stand-in for ``LiveModel`` whose finals and drafts sleep modelled times (see the module)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.workers = args, args.workers
        self.final_calls = self.draft_calls = self.drafts_made = 0
        self.final_seconds = self.draft_seconds = 0.0  # audio seconds captioned / drafted

    def open_engine(self, max_streams: int, max_seconds: float) -> None:
        return None

    def open(self, engine, prompt: str = ""):
        return _Decoder()

    def settle_context(self) -> bool:
        return False

    def _final_cost(self, request) -> float:
        return self.args.final_base + self.args.final_per_s * len(request.audio) / SAMPLE_RATE

    def encode_finals(self, requests):
        self.final_calls += 1
        for position, request in enumerate(requests):
            cost = self.args.final_whisper_share * self._final_cost(request)
            time.sleep(cost)
            yield position, cost

    def final(self, request, encoded_cost: float) -> Caption:
        cost = self._final_cost(request)
        time.sleep(cost - encoded_cost)
        self.final_seconds += len(request.audio) / SAMPLE_RATE
        return Caption(request.start_s, request.end_s, "words", cost)

    def drafts(self, requests):
        self.draft_calls += 1
        self.drafts_made += len(requests)
        seconds = sum(len(request.audio) for request in requests) / SAMPLE_RATE
        self.draft_seconds += seconds
        args = self.args
        cost = args.draft_base + args.draft_per_stream * len(requests) + args.draft_per_s * seconds
        time.sleep(cost)
        for position, request in enumerate(requests):
            yield position, Caption(request.start_s, request.end_s, "words", cost)


class _Decoder:
    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[4])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream")
    parser.add_argument("--manifest", type=Path, default=DEV)
    parser.add_argument("--final-base", type=float, default=0.1, help="worker seconds of any final")
    parser.add_argument("--final-per-s", type=float, default=0.2, help="and per second of its chunk")
    parser.add_argument("--final-whisper-share", type=float, default=0.5,
                        help="of a final's cost, what its Whisper call takes (the rest: its LLM call)")
    parser.add_argument("--workers", type=int, default=1, help="worker threads")
    parser.add_argument("--draft-base", type=float, default=0.1, help="seconds of a batched draft call")
    parser.add_argument("--draft-per-stream", type=float, default=0.08, help="and per draft in it")
    parser.add_argument("--draft-per-s", type=float, default=0.01, help="and per second of audio drafted")
    parser.add_argument("--output", type=Path, default=Path("eval/results"))
    parser.add_argument("--name", default="live_schedule")
    args = parser.parse_args(argv)
    report = {"command": " ".join(sys.argv), "costs": {k: v for k, v in vars(args).items()
                                                       if k.startswith(("final_", "draft_"))}, "streams": []}
    for streams in args.streams:
        model = ModelledCosts(args)
        result = asyncio.run(run_streams(model, streams, args))
        result["calls"] = {"finals": model.final_calls, "draft_calls": model.draft_calls,
                           "drafts": model.drafts_made, "drafted_audio_s": round(model.draft_seconds, 1)}
        report["streams"].append(result)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{args.name}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'streams':>7} {'finals':>6} {'p50 s':>6} {'p95 s':>6} {'max s':>6} {'gap p50/p95 s':>14} "
          f"{'busy finals/partials s':>23} {'drafts':>6}")
    for s in report["streams"]:
        print(f"{s['streams']:>7} {s['finals']:>6} {s['latency_p50']:>6.2f} {s['latency_p95']:>6.2f} "
              f"{s['latency_max']:>6.2f} {s['partial_gap_p50']:>6.2f} / {s['partial_gap_p95']:<5.2f} "
              f"{s['busy_finals_s']:>11.1f} / {s['busy_partials_s']:<9.1f} {s['calls']['drafts']:>6}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
