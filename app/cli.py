"""``asr``: the command line. Thin: parse arguments, call library code, report errors."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from asr.errors import AsrError

# Subcommand modules under app.commands, in help order.
COMMANDS: list[str] = ["transcribe", "qa", "serve", "ui"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr",
        description="Long-form speech transcription on a speech LLM with UNIQUE top-k sparse attention.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"app.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except AsrError as error:
        print(f"asr {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
