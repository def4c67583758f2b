"""``asr transcribe FILE...``: transcribe recordings of any length to txt, json, srt or vtt."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.errors import AsrError
from asr.speech.arguments import add_transcribe_arguments, options_from_args
from asr.writers import WRITERS, get_writer


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "transcribe", help="transcribe audio files", description="Transcribe audio files of any length "
        "(wav, flac, mp3, ogg; m4a/webm where ffmpeg exists) through one growing LLM context.")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--format", default="txt", choices=[*WRITERS, "all"], help="output format (default: txt)"
    )
    parser.add_argument("--output", type=Path, default=Path("."), help="directory for the output files")
    add_transcribe_arguments(parser)
    parser.set_defaults(handler=run)


def describe(path: Path, transcript) -> str:
    """The line printed per file: duration, real-time factor and how much of the KV cache decode read."""
    stats = transcript.stats
    minutes, seconds = divmod(int(round(transcript.duration)), 60)
    hours, minutes = divmod(minutes, 60)
    if stats.attention == "dense":
        pages_text = ", dense attention (every KV page read)"
    elif stats.kv_pages_read >= 1.0:
        pages_text = f", KV pages read 100% (the whole context fit the {stats.budget_tokens}-token budget)"
    else:
        pages_text = f", KV pages read {100 * stats.kv_pages_read:.1f}%"
    return (
        f"{path}: {hours}:{minutes:02d}:{seconds:02d} of audio, real-time factor {stats.rtf:.3f}{pages_text}"
    )


def run(args: argparse.Namespace) -> int:
    from asr.speech.audio import check_audio_path, load_audio
    from asr.speech.pipeline import load_transcriber

    formats = list(WRITERS) if args.format == "all" else [args.format]
    writers = {fmt: get_writer(fmt) for fmt in formats}
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        options = options_from_args(args)
    except ValueError as error:
        print(f"asr transcribe: {error}", file=sys.stderr)
        return 2
    failed, readable = 0, []
    for path in args.files:  # before the model loads: a mistyped path should not wait for it
        try:
            check_audio_path(path)
            readable.append(path)
        except AsrError as error:
            failed += 1
            print(f"asr transcribe: {error}", file=sys.stderr)
    transcriber = load_transcriber(args.model, options) if readable else None
    for path in readable:
        try:
            audio = load_audio(str(path))
            transcript = transcriber.transcribe(audio, progress=True, name=path.name)
        except AsrError as error:
            failed += 1
            print(f"asr transcribe: {path}: {error}", file=sys.stderr)
            continue
        for fmt, write in writers.items():
            write(transcript, args.output / f"{path.stem}.{fmt}")
        print(describe(path, transcript))
    if failed:
        print(f"asr transcribe: {failed} of {len(args.files)} files failed", file=sys.stderr)
    return 1 if failed else 0
