"""Long-context QA accuracy of dense vs UNIQUE vs Quest decode attention at budgets 1/4 .. 1/32 of the
context.

RULER-style synthetic tasks generated from a seed (needle in a noise haystack; Hsieh et al. 2024):
  niah_single      one "special magic number" needle; ask for it
  niah_multikey    four needles with different keys; ask for one
  niah_multivalue  four numbers for one key; ask for all (score: share found)
  vt               variable tracking: a 4-hop chain of assignments plus a distractor chain; ask for every
                   variable that holds the value (score: share found)
plus questions with known answers over a real long document (the GPL-3 text that Debian ships in
/usr/share/common-licenses, or --doc), cut to a window of the context length around the answer.

Each prompt is prefilled ONCE; every attention setting then answers from the same cache (greedy), rolled
back in between, so differences come from decode attention alone. Prints a table, writes longqa.json.

    python -m eval.longqa                                   # embedded SmolLM2-135M, contexts 2k..7.5k
    python -m eval.longqa --contexts 1024 --samples 1 --budgets 4 8   # quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from asr.attention import UniqueConfig
from asr.attention.config import UniSparseConfig
from asr.llm.config import EngineConfig, SamplingParams
from asr.llm.embedded import embedded_llm_dir
from asr.llm.engine import LLMEngine
from asr.llm.qa import QA_UNISPARSE

log = logging.getLogger("longqa")

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_WORDS = ("amber harbor cobalt falcon garnet hollow ivory juniper kestrel lantern marble nectar orchid "
             "pepper quartz raven saffron tundra umber violet willow zephyr").split()
DEFAULT_DOC = Path("/usr/share/common-licenses/GPL-3")
# (question, anchor text the answer window must hold, accepted answers: any one matching counts)
DOC_QUESTIONS = [
    (
        "On what date was this version of the license published?",
        "Version 3, 29 June 2007",
        ["29 june 2007", "june 29, 2007"],
    ),
    (
        "For how long must a written offer to provide the Corresponding Source remain valid?",
        "valid for at least three years",
        ["three years", "3 years"],
    ),
    (
        "Within how many days after notification must a first violation be cured for the license to be "
        "reinstated?",
        "cure the violation prior to 30 days",
        ["30 days", "thirty days", "30"],
    ),
    (
        "Which other license does section 13 allow a covered work to be combined with?",
        "13. Use with the GNU Affero",
        ["affero"],
    ),
    ("What is the title of section 15?", "15. Disclaimer of Warranty", ["disclaimer of warranty"]),
    (
        "Who holds the copyright of the license text itself?",
        "Copyright (C) 2007 Free Software Foundation",
        ["free software foundation"],
    ),
]
TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "vt", "doc")


@dataclass
class Sample:
    """prompt: chat-templated token ids (ending with an answer prefix); answers: strings to find."""

    task: str
    prompt: list[int]
    answers: list[str]
    max_tokens: int
    any_answer: bool = False  # doc questions: one of several phrasings


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="HF directory, GGUF file or LoRA adapter directory (default: the embedded "
        "SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--contexts", type=int, nargs="+", default=[2048, 4096, 7680], help="prompt lengths (tokens)"
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--samples", type=int, default=3, help="samples per task and context")
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16, 32], help="budget = context / N")
    parser.add_argument("--methods", nargs="+", default=["unique", "quest"], choices=["unique", "quest"])
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--prefill", default="dense", choices=["dense", "unisparse"],
                        help="attention of the prompt's prefill (every setting answers from the same cache)")
    parser.add_argument("--unisparse-mass", type=float, default=QA_UNISPARSE.mass,
                        help="UniSparse prefill: share of each query block's estimated attention to keep")
    parser.add_argument("--unisparse-max-blocks", type=int, default=QA_UNISPARSE.max_blocks,
                        help="UniSparse prefill: most key blocks a query block chooses besides forced ones")
    parser.add_argument("--unisparse-granularities", type=int, nargs="+",
                        default=list(QA_UNISPARSE.granularities),
                        help="UniSparse prefill: queries per composite query at each scoring granularity")
    parser.add_argument("--unisparse-dense-last", type=int, default=QA_UNISPARSE.dense_last_blocks,
                        help="UniSparse prefill: the last query blocks of a prefill that attend every key "
                        "(default: asr qa's)")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="real long document for the doc task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=4, help="samples decoded together")
    parser.add_argument("--output", type=Path, default=Path("eval/results"))
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------- tasks
def random_number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def random_key(rng: random.Random) -> str:
    return "-".join(rng.sample(KEY_WORDS, 2))


def haystack_with(
    engine: LLMEngine, needles: list[str], budget_tokens: int, rng: random.Random,
    chains: tuple[list[str], ...] = (),
) -> str:
    """Noise sentences holding ``needles`` at random depths, about ``budget_tokens`` tokens long; the
    needles of each of ``chains`` (lists of needles) appear in their chain's order."""
    per_noise = len(engine.tokenizer.encode(NOISE * 8, add_special_tokens=False)) / 8
    needle_tokens = sum(len(engine.tokenizer.encode(n, add_special_tokens=False)) for n in needles)
    repeats = max(1, int((budget_tokens - needle_tokens) / per_noise))
    pieces = [NOISE] * repeats
    for needle in needles:
        pieces.insert(rng.randint(0, len(pieces)), needle + " ")
    for chain in chains:
        slots = sorted(pieces.index(needle + " ") for needle in chain)
        for slot, needle in zip(slots, chain):
            pieces[slot] = needle + " "
    return "".join(pieces)


def chat(engine: LLMEngine, user: str, answer_prefix: str) -> list[int]:
    prompt = engine.chat_prompt([{"role": "user", "content": user}])
    return prompt + engine.tokenizer.encode(answer_prefix, add_special_tokens=False)


def make_synthetic(engine: LLMEngine, task: str, context: int, rng: random.Random) -> Sample:
    """One RULER-style sample whose prompt is close to ``context`` tokens."""
    room = context - 160  # instructions, question, answer prefix
    intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them.\n\n"
    if task in ("niah_single", "niah_multikey", "niah_multivalue"):
        keys = [random_key(rng) for _ in range(4 if task == "niah_multikey" else 1)]
        values = [random_number(rng) for _ in range(4 if task != "niah_single" else 1)]
        if task == "niah_multivalue":
            needles = [f"One of the special magic numbers for {keys[0]} is: {v}." for v in values]
            answers, plural = values, True
        else:
            needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
            answers, plural = [values[0]], False
        text = haystack_with(engine, needles, room, rng)
        noun = "numbers" if plural else "number"
        asked = "are all the special magic numbers" if plural else "is the special magic number"
        question = f"What {asked} for {keys[0]} mentioned in the provided text?"
        verb = "are" if plural else "is"
        prefix = f"The special magic {noun} for {keys[0]} mentioned in the provided text {verb}"
        prompt = chat(engine, f"{intro}{text}\n\n{question}", prefix)
        return Sample(task, prompt, answers, 40 if plural else 12)
    # variable tracking: VAR A = value; VAR B = VAR A; ... and a distractor chain
    names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(10)]
    value, other = random_number(rng)[:5], random_number(rng)[:5]
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)]
    distractor = [f"VAR {names[5]} = {other}."] + [
        f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(6, 10)
    ]
    text = haystack_with(engine, chain + distractor, room, random.Random(rng.random()), (chain, distractor))
    intro = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    question = f"Question: Find all variables that are assigned the value {value} in the text above."
    prefix = (f"Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
              f"assigned the value {value}, they are:")
    return Sample(task, chat(engine, f"{intro}{text}\n\n{question}", prefix), names[:5], 32)


def make_doc_question(
    engine: LLMEngine, document: str, context: int, index: int, rng: random.Random
) -> Sample:
    """A question over a window of the real document (about ``context`` tokens) holding its answer."""
    from asr.llm.qa import qa_prompt

    question, anchor, answers = DOC_QUESTIONS[index % len(DOC_QUESTIONS)]
    chars = int(
        (context - 120) * len(document) / len(engine.tokenizer.encode(document, add_special_tokens=False))
    )
    at = document.index(anchor)
    start = max(0, min(at - rng.randint(0, max(0, chars - len(anchor))), len(document) - chars))
    window = document[start : start + chars]
    prompt = qa_prompt(engine, window, question)
    return Sample(
        "doc",
        prompt[: engine.max_context - 40] if len(prompt) > engine.max_context - 40 else prompt,
        answers,
        24,
        any_answer=True,
    )


def score(sample: Sample, text: str) -> float:
    """RULER string match: share of the answers found (doc: 1 if any accepted phrasing is found)."""
    text = re.sub(r"\s+", " ", text.lower())
    found = [answer.lower() in text for answer in sample.answers]
    return float(any(found)) if sample.any_answer else sum(found) / len(found)


# ------------------------------------------------------------------------------------------- run
def settings(context: int, args) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = [("dense", None)]
    for method in args.methods:
        for divisor in args.budgets:
            budget = max(context // divisor // args.page_size * args.page_size, 3 * args.page_size)
            out.append((method, budget))
    return out


def evaluate(engine: LLMEngine, samples: list[Sample], context: int, args) -> list[dict]:
    """Prefill the samples once, then answer with every attention setting; rows of per-setting accuracy."""
    rows = []
    for begin in range(0, len(samples), args.batch):
        group = samples[begin : begin + args.batch]
        seqs = [engine.new_sequence() for _ in group]
        for seq, sample in zip(seqs, group):
            engine.append(seq, token_ids=sample.prompt)
        saved = [(seq.num_tokens, seq.next_logits.clone()) for seq in seqs]
        for method, budget in settings(context, args):
            sparse = UniqueConfig(
                page_size=args.page_size,
                budget_tokens=budget or 4 * args.page_size,
                sink_pages=1,
                local_pages=2,
            )
            engine.set_attention(method, sparse)
            params = [SamplingParams(max_tokens=s.max_tokens) for s in group]
            outputs = engine.generate_many(seqs, params)
            for seq, sample, tokens, (length, logits) in zip(seqs, group, outputs, saved):
                text = engine.tokenizer.decode(tokens, skip_special_tokens=True)
                rows.append(
                    dict(
                        task=sample.task,
                        context=context,
                        prompt_tokens=len(sample.prompt),
                        method=method,
                        budget=budget,
                        divisor=context // budget if budget else 1,
                        score=score(sample, text),
                        kv_read_share=seq.kv_read_share,
                        answer=text.strip()[:200],
                        expected=sample.answers,
                    )
                )
                engine.truncate(seq, length)
                seq.next_logits, seq.pages_read, seq.pages_dense = logits, 0, 0
        for seq in seqs:
            engine.free(seq)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean score per (task, context, method, divisor), plus an 'all' task."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        for task in (row["task"], "all"):
            groups.setdefault((task, row["context"], row["method"], row["divisor"]), []).append(row["score"])
    return [dict(task=t, context=c, method=m, divisor=d, accuracy=sum(v) / len(v), n=len(v))
            for (t, c, m, d), v in sorted(groups.items(), key=lambda kv: (kv[0][0] != "all", kv[0]))]


def table(summary: list[dict], contexts: list[int], columns: list[tuple[str, int]]) -> str:
    head = (
        "| task | context | "
        + " | ".join("dense" if m == "dense" else f"{m} 1/{d}" for m, d in columns)
        + " |"
    )
    lines = [head, "| --- | ---: |" + " ---: |" * len(columns)]
    index = {(s["task"], s["context"], s["method"], s["divisor"]): s for s in summary}
    tasks = list(dict.fromkeys(s["task"] for s in summary))
    for task in tasks:
        for context in contexts:
            cells = [index.get((task, context, m, d)) for m, d in columns]
            lines.append(
                f"| {task} | {context} | "
                + " | ".join(f"{c['accuracy']:.2f}" if c else "" for c in cells)
                + " |"
            )
    return "\n".join(lines)


def write_results(
    args, engine: LLMEngine, rows: list[dict], contexts: list[int], seconds: float
) -> tuple[dict, str]:
    summary = summarize(rows)
    columns = [("dense", 1)] + [(m, d) for m in args.methods for d in args.budgets]
    meta = dict(model=str(args.model or "embedded SmolLM2-135M-Instruct"), device=str(engine.device),
                dtype=str(engine.dtype), contexts=contexts, samples=args.samples, seed=args.seed,
                page_size=args.page_size, prefill=args.prefill,
                unisparse=asdict(engine.config.unisparse) if args.prefill == "unisparse" else None,
                seconds=round(seconds, 1), doc=str(args.doc))
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "longqa.json").write_text(
        json.dumps(dict(meta=meta, summary=summary, rows=rows), indent=1)
    )
    text = table(summary, contexts, columns)
    (args.output / "longqa.md").write_text(text + "\n")
    return meta, text


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    config = EngineConfig(device=args.device, dtype=args.dtype, max_batch=args.batch, cuda_graphs=True,
                          sparse=UniqueConfig(page_size=args.page_size), prefill=args.prefill,
                          unisparse=UniSparseConfig(mass=args.unisparse_mass,
                                                    max_blocks=args.unisparse_max_blocks,
                                                    granularities=tuple(args.unisparse_granularities),
                                                    dense_last_blocks=args.unisparse_dense_last))
    engine = LLMEngine.from_pretrained(args.model or embedded_llm_dir(), config)
    document = args.doc.read_text() if "doc" in args.tasks and args.doc.is_file() else None
    contexts = [c for c in args.contexts if c <= engine.max_context - 64]
    rows, started = [], time.time()
    for context in contexts:
        rng = random.Random(f"{args.seed}-{context}")
        samples = []
        for task in args.tasks:
            for index in range(args.samples):
                if task == "doc":
                    if document is not None:
                        samples.append(make_doc_question(engine, document, context, index, rng))
                else:
                    samples.append(make_synthetic(engine, task, context, rng))
        for begin in tqdm(range(0, len(samples), args.batch), desc=f"context {context}"):
            rows.extend(evaluate(engine, samples[begin : begin + args.batch], context, args))
        done = contexts[: contexts.index(context) + 1]
        meta, text = write_results(args, engine, rows, done, time.time() - started)  # after every context
    print(
        f"\n{meta['model']} on {meta['device']} ({meta['dtype']}), {args.samples} samples per task and "
        "context, "
        f"budget = context / N, page {args.page_size}"
    )
    print(text)


if __name__ == "__main__":
    main()
