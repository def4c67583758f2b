"""Command-line arguments of a transcription run, shared by ``asr transcribe`` and ``eval/wer.py``:
one set of flags, defaults and help texts, turned into ``TranscribeOptions`` in one place."""

from __future__ import annotations

import argparse

from asr.speech.draft_decoding import DEFAULT_END_TOLERANCE, DEFAULT_GATE, DEFAULT_TOLERANCE

ATTENTION_CHOICES = ("unique", "dense", "quest")
PREFILL_CHOICES = ("dense", "unisparse")
DTYPE_CHOICES = ("bfloat16", "float32", "int8")
DTYPE_HELP = ("LLM weights and cache (default: bfloat16 on a GPU and on CPUs with native bf16, AVX512-BF16 "
              "or AMX; int8 on other CPUs: int8 linear layers over float32, CPU only)")


def add_transcribe_arguments(parser: argparse.ArgumentParser, device_default: str | None = None) -> None:
    """Add --model, --attention, --prefill, --budget, --max-distance, --dtype, --threads, --drafts, the
    draft gate and tolerances and --device to ``parser``."""
    parser.add_argument("--attention", default="unique", choices=ATTENTION_CHOICES,
                        help="decode attention: top-k pages (unique, quest) or every page (dense)")
    parser.add_argument("--prefill", default="unisparse", choices=PREFILL_CHOICES,
                        help="attention of each chunk appended to a long context: the key blocks UniSparse "
                        "picks per query block (unisparse, default) or every cached key (dense)")
    parser.add_argument("--budget", type=int, default=2048, help="tokens each sparse decode step reads")
    parser.add_argument("--max-distance", type=int, default=4096,
                        help="farthest a cached key may sit from the newest token before old pages are moved "
                        "closer, so hour-long contexts stay in the range the model was trained on (0: never)")
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help=DTYPE_HELP)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: one per physical core, within the CPU quota)")
    parser.add_argument("--model", help="speech model directory (default: the embedded model)")
    parser.add_argument("--drafts", action=argparse.BooleanOptionalAction, default=None,
                        help="put each chunk's Whisper draft into the context and verify it as the LLM's "
                        "proposal (default: as the model was trained)")
    parser.add_argument("--draft-gate", type=float, default=DEFAULT_GATE,
                        help="Whisper's word probability from which a draft word is kept without asking "
                        "the LLM (0: the draft as it is; above 1: the LLM checks every word; "
                        "default: %(default)s)")
    parser.add_argument("--draft-tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="nats by which an unsure draft token may trail the LLM's own choice and still "
                        "be kept (gate above 1 and 0: the LLM's exact greedy transcript; "
                        "default: %(default)s)")
    parser.add_argument("--draft-end-tolerance", type=float, default=DEFAULT_END_TOLERANCE,
                        help="nats by which the LLM's end of the transcript must beat the draft's next "
                        "token to end it before the draft is used up (default: %(default)s)")
    device_help = "cpu or cuda" + (" (default: cuda if available)" if device_default is None else "")
    parser.add_argument("--device", default=device_default, help=device_help)


def options_from_args(args: argparse.Namespace):
    """``TranscribeOptions`` of parsed arguments (ValueError for settings it refuses)."""
    from asr.speech.pipeline import TranscribeOptions

    return TranscribeOptions(attention=args.attention, prefill=args.prefill, budget_tokens=args.budget,
                             device=args.device, dtype=args.dtype, threads=args.threads,
                             max_distance=args.max_distance or None,
                             drafts=args.drafts, draft_gate=args.draft_gate,
                             draft_tolerance=args.draft_tolerance,
                             draft_end_tolerance=args.draft_end_tolerance)
