"""``asr serve``: live captions over websockets (ws://HOST:PORT/ws) and the browser page (http://HOST:PORT/)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from asr.speech.arguments import DTYPE_CHOICES, DTYPE_HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="live-caption websocket server and browser page",
        description="Serve live captions: clients stream audio to ws://HOST:PORT/ws (protocol in README); "
        "the page at http://HOST:PORT/ captions the microphone.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--token", help="clients must send it (Authorization: Bearer T, or ?token=T)")
    parser.add_argument(
        "--max-sessions", type=int, default=4, help="concurrent streams; more are refused (1013)"
    )
    parser.add_argument(
        "--max-frame-bytes", type=int, default=1 << 20, help="largest message (larger: closed, 1009)"
    )
    parser.add_argument(
        "--max-session-seconds", type=float, default=1800.0, help="longest stream, in seconds of audio"
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=30.0, help="seconds without a message before a stream ends"
    )
    parser.add_argument(
        "--attention",
        default="unique",
        choices=["unique", "dense", "quest"],
        help="decode attention: top-k pages (unique, quest) or every page (dense)",
    )
    parser.add_argument("--budget", type=int, default=2048, help="tokens each sparse decode step reads")
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help=DTYPE_HELP)
    parser.add_argument("--model", help="speech model directory (default: the embedded model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="model calls at once, each on its share of the CPU threads (default: 2 on a CPU of 2 cores or "
        "more, else 1)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from asr.live.server import LiveServer, ServerConfig
    from asr.live.session import LiveModel
    from asr.live.stream import StreamConfig
    from asr.speech.pipeline import TranscribeOptions

    options = TranscribeOptions(
        attention=args.attention, budget_tokens=args.budget, device=args.device, dtype=args.dtype
    )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        max_sessions=args.max_sessions,
        max_frame_bytes=args.max_frame_bytes,
        idle_timeout_s=args.idle_timeout,
        stream=StreamConfig(max_seconds=args.max_session_seconds),
    )
    print("asr serve: loading the model ...", file=sys.stderr, flush=True)
    model = LiveModel.load(args.model, options, workers=args.workers)
    server = LiveServer(model, config)

    async def main() -> None:
        await server.start()
        workers = f"{model.workers} model worker{'s' if model.workers > 1 else ''}"
        print(
            f"asr serve: live captions on ws://{args.host}:{server.port}/ws, page at "
            f"http://{args.host}:{server.port}/ ({workers}; Ctrl-C stops; open streams get their finals "
            "first)",
            flush=True,
        )
        await server.wait_stopped()

    asyncio.run(main())
    return 0
