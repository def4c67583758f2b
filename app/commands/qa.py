"""``asr qa --doc FILE --question "..."``: answer a question about a long text document (answer streams)."""

from __future__ import annotations

import argparse
import sys

from asr.speech.repetition import LoopConfig

# An answer that repeats a unit three times is looping (a transcript needs four: speech repeats more).
QA_LOOP = LoopConfig(min_repeats=3)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "qa", help="answer a question about a text document",
        description="Put a long text document into the LLM's context and stream the answer to a question.")
    parser.add_argument("--doc", required=True, help="UTF-8 text file")
    parser.add_argument("--question", required=True, help="the question to answer")
    # dense by default; with the soft-mask QA adapter unique at 1/8 of the context comes within a few
    # points of dense (eval/longqa.py, BENCHMARKS.md "Run 4"), without it it loses exact copying
    parser.add_argument("--attention", default="dense", choices=["dense", "unique", "quest"],
                        help="decode attention: every page (dense, default) or top-k pages (unique, quest)")
    parser.add_argument("--prefill", default="dense", choices=["dense", "unisparse"],
                        help="attention of the document's prefill: every earlier key (dense, default) or the "
                        "key blocks UniSparse picks per query block (unisparse)")
    parser.add_argument("--budget", type=int, default=1024, help="tokens each sparse decode step reads")
    parser.add_argument("--page-size", type=int, default=16,
                        help="tokens per KV page (16: the page the QA adapter was fine-tuned with)")
    parser.add_argument("--max-tokens", type=int, default=256, help="longest answer in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--model", help="Hugging Face directory, GGUF file or LoRA adapter directory "
                        "(default: the embedded model with its soft-mask QA adapter)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.set_defaults(handler=run)


def qa_loop_start(token_ids: list[int]) -> int | None:
    """The speech side's loop detection, for answers (small models loop until the token limit)."""
    from asr.speech.repetition import loop_start

    return loop_start(token_ids, QA_LOOP)


def run(args: argparse.Namespace) -> int:
    from asr.attention import UniqueConfig
    from asr.llm.config import EngineConfig, SamplingParams
    from asr.llm.embedded import qa_adapter_dir
    from asr.llm.engine import LLMEngine
    from asr.llm.qa import QA_UNISPARSE, answer, read_document

    document = read_document(args.doc)  # fail fast, before loading the model
    sparse = UniqueConfig(page_size=args.page_size, budget_tokens=args.budget)
    config = EngineConfig(
        attention=args.attention, sparse=sparse, prefill=args.prefill, device=args.device, max_batch=1,
        cuda_graphs=False, unisparse=QA_UNISPARSE,
    )
    engine = LLMEngine.from_pretrained(args.model or qa_adapter_dir(), config)

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    answer(
        engine,
        document,
        args.question,
        SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens),
        on_text=show,
        loop_start=qa_loop_start,
    )
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0
