"""``asr ui``: the Gradio app (transcription and document QA)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("ui", help="Gradio web UI: transcribe audio, ask questions about documents")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("asr ui: not built yet")
