"""``asr transcribe FILE...``: transcribe recordings of any length to txt, json, srt or vtt."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.errors import AsrError
from asr.writers import WRITERS, get_writer


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "transcribe", help="transcribe audio files", description="Transcribe audio files of any length "
        "(wav, flac, mp3, ogg; m4a/webm where ffmpeg exists) through one growing LLM context.")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--format", default="txt", choices=[*WRITERS, "all"], help="output format (default: txt)")
    parser.add_argument("--output", type=Path, default=Path("."), help="directory for the output files")
    parser.add_argument("--attention", default="unique", choices=["unique", "dense", "quest"],
                        help="decode attention: top-k pages (unique, quest) or every page (dense)")
    parser.add_argument("--budget", type=int, default=2048, help="tokens each sparse decode step reads")
    parser.add_argument("--max-distance", type=int, default=4096,
                        help="farthest a cached key may sit from the newest token before old pages are moved "
                        "closer, so hour-long contexts stay in the range the model was trained on (0: never)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "int8"],
                        help="LLM weights and cache (int8: CPU only, int8 linear layers over float32)")
    parser.add_argument("--model", help="speech model directory (default: the embedded model)")
    parser.add_argument("--drafts", action=argparse.BooleanOptionalAction, default=None,
                        help="put each chunk's Whisper draft into the context and verify it as the LLM's "
                        "proposal (default: as the model was trained)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.set_defaults(handler=run)


def describe(path: Path, transcript) -> str:
    stats = transcript.stats
    minutes, seconds = divmod(int(round(transcript.duration)), 60)
    hours, minutes = divmod(minutes, 60)
    pages = stats.get("kv_pages_read")
    pages_text = f", KV pages read {100 * pages:.1f}%" if pages is not None else ""
    return (f"{path}: {hours}:{minutes:02d}:{seconds:02d} of audio, real-time factor "
            f"{stats.get('rtf', float('nan')):.3f}{pages_text}")


def run(args: argparse.Namespace) -> int:
    from asr.speech.audio import load_audio
    from asr.speech.pipeline import TranscribeOptions, load_transcriber

    formats = list(WRITERS) if args.format == "all" else [args.format]
    writers = {fmt: get_writer(fmt) for fmt in formats}
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        options = TranscribeOptions(attention=args.attention, budget_tokens=args.budget, device=args.device,
                                    dtype=args.dtype, max_distance=args.max_distance or None,
                                    drafts=args.drafts)
    except ValueError as error:
        print(f"asr transcribe: {error}", file=sys.stderr)
        return 2
    transcriber = load_transcriber(args.model, options)
    failed = 0
    for path in args.files:
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
