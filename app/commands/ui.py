"""``asr ui``: the Gradio app (transcription and document QA) on http://HOST:PORT/."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ui",
        help="Gradio web UI: transcribe audio, ask questions about documents",
        description="A Gradio app: transcribe uploaded or recorded audio "
        "(timestamps, segments, txt/srt/vtt/json, "
        "speed figures) and answer questions about long documents. No public link unless --share.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    parser.add_argument("--model", help="speech model directory (default: the embedded model)")
    parser.add_argument(
        "--qa-model",
        help="LLM for the QA tab: Hugging Face directory or GGUF file "
        "(default: the embedded 135M model; a larger one gives useful answers)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--max-upload-mb", type=int, default=200, help="largest upload")
    parser.add_argument("--max-audio-minutes", type=float, default=30.0, help="longest recording")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from app.ui import UiBackend, UiLimits, build_app

    limits = UiLimits(max_upload_mb=args.max_upload_mb, max_audio_s=args.max_audio_minutes * 60)
    print("asr ui: loading the model ...", file=sys.stderr, flush=True)
    backend = UiBackend.load(args.model, args.qa_model, args.device, limits)
    build_app(backend).queue().launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=f"{args.max_upload_mb}mb",
    )
    return 0
