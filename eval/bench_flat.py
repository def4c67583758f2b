"""One speech chunk's LLM time against the context it joins (CPU): the fast proxy of an hour-long
recording's per-chunk time, whose first and last ten minutes it compares.

The embedded SmolLM2-135M (bf16, UNIQUE decoding at budget 2048, UniSparse prefill: the defaults of
``asr transcribe``) gets ``context`` cached tokens of random keys and values written straight into the
cache (as ``eval.bench_prefill --modes chunk``: diffuse attention, UniSparse's costliest case), then runs
one chunk as ``LongformSession.transcribe_chunk`` does and rolls it back:

- ``append``: the chunk's prefill (audio embeddings, prompt and draft: ``--append`` tokens);
- ``score``: ``--readings`` readings of ``--reading-tokens`` tokens scored as the draft gate scores
  Whisper's readings of a chunk (``LLMEngine.score_continuations``: sorted, each prefilling the tokens
  after the prefix it shares with the one before; here each shares its first half with the others);
- ``accept``: the draft verified as a proposal (``--proposal`` tokens, all kept);
- ``decode``: ``--decode`` tokens decoded one at a time (the LLM's corrections, the end of turn);
- ``collapse``: one distance-ceiling collapse at that context (``asr.llm.distance_cap``: ``slack`` new
  tokens' pages join the collapsed ones), charged to the chunk by the share of a collapse its tokens
  cause (``(append + proposal + decode) / slack``).

Each piece is the median of ``--repeats`` runs, in wall-clock seconds and in CPU seconds of this process
(``time.process_time``: on a machine that other jobs share, the wall clock measures them too; with
``--threads 1`` the CPU seconds are the work itself). On the 60-minute recording of BENCHMARKS.md a chunk
added 146 tokens (the defaults: 120 + 20 + 6) and its first / last ten minutes held 0-11k / 56k-68k
tokens, so the rows at 5k and 62k stand for them; ``last/first`` is the ratio of their chunk times.

    python -m eval.bench_flat --output eval/results/bench_flat.json --label branch
    python /path/to/eval/bench_flat.py ...   # from outside a checkout: the installed ``asr`` (another commit)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import asr
from asr.attention.config import UniSparseConfig
from asr.llm.config import EngineConfig, SamplingParams
from asr.llm.distance_cap import DistanceCap
from asr.llm.embedded import embedded_llm_dir
from asr.llm.engine import LLMEngine
from asr.speech.pipeline import TranscribeOptions

PROPOSAL_IDS = (1000, 20000)  # random proposal and chunk ids from ordinary vocabulary (no stop tokens)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[5000, 20000, 45000, 62000])
    p.add_argument("--append", type=int, default=120, help="tokens of the chunk's prefill")
    p.add_argument("--proposal", type=int, default=20, help="draft tokens verified in one forward")
    p.add_argument("--decode", type=int, default=6, help="tokens decoded one at a time")
    p.add_argument("--readings", type=int, default=6, help="readings scored per chunk (0: none)")
    p.add_argument("--reading-tokens", type=int, default=40, help="tokens per reading")
    p.add_argument("--candidate-blocks", type=int, nargs="+", default=[UniSparseConfig.candidate_blocks],
                   help="UniSparseConfig.candidate_blocks settings to run one after another (0: every key)")
    p.add_argument("--max-blocks", type=int, default=TranscribeOptions().engine_config().unisparse.max_blocks,
                   help="UniSparseConfig.max_blocks (default: what asr transcribe sets at its budget)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "int8"),
                   help="LLM weights and cache (int8: int8 weights over a float32 cache)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--label", default="", help="names this run's rows (e.g. the branch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("eval/results/bench_flat.json"),
                   help="JSON file of runs by label; the other labels' runs in it are kept")
    return p.parse_args(argv)


def fill_context(engine: LLMEngine, context: int, gen: torch.Generator):
    """A new sequence holding ``context`` tokens of random keys and values (every layer)."""
    seq = engine.new_sequence()
    shape = engine.cache.shape
    slots = engine.cache.reserve([seq.seq_id], [context])
    for layer in range(shape.num_layers):
        k, v = torch.randn(2, context, shape.num_kv_heads, shape.head_dim, generator=gen)
        engine.cache.write(layer, k, v, slots)
    seq.num_tokens, seq.token_ids = context, [None] * context
    return seq


def chunk_row(engine: LLMEngine, context: int, args, cap: DistanceCap, gen: torch.Generator) -> dict:
    """Seconds of each piece of one chunk at ``context`` cached tokens."""
    seq = fill_context(engine, context, gen)
    chunk = engine.embed_tokens(torch.randint(*PROPOSAL_IDS, (args.append,), generator=gen))
    proposal = torch.randint(*PROPOSAL_IDS, (args.proposal,), generator=gen).tolist()
    shared = torch.randint(*PROPOSAL_IDS, (args.reading_tokens // 2,), generator=gen).tolist()
    rest = args.reading_tokens - len(shared)
    readings = [shared + torch.randint(*PROPOSAL_IDS, (rest,), generator=gen).tolist()
                for _ in range(args.readings)]
    decoding = SamplingParams(max_tokens=args.decode, ignore_eos=True)

    def before_collapse() -> None:  # the oldest uncollapsed key one past max_distance + slack
        position = context - cap.max_distance - cap.slack - 1
        seq.collapsed_pages, seq.collapsed_position = position // engine.cache.page_size, position

    pieces = (("append", lambda: engine.append(seq, embeds=chunk)),
              ("score", lambda: readings and engine.score_continuations(seq, readings)),
              ("accept", lambda: engine.accept_proposal(seq, proposal, tolerance=float("inf"))),
              ("decode", lambda: engine.generate(seq, decoding)),
              ("rollback", lambda: engine.truncate(seq, context)),
              ("collapse", lambda: before_collapse() or engine.cap_distances(seq, cap)))
    wall, cpu = {name: [] for name, _ in pieces}, {name: [] for name, _ in pieces}
    for _ in range(args.repeats):
        for name, run in pieces:
            started, started_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    engine.free(seq)
    row = {"context": context}
    collapses_per_chunk = (args.append + args.proposal + args.decode) / cap.slack
    for suffix, seconds in (("s", wall), ("cpu_s", cpu)):
        median = {name: statistics.median(values) for name, values in seconds.items() if name != "rollback"}
        median["collapse_per_chunk"] = median["collapse"] * collapses_per_chunk
        median["chunk"] = sum(median[name] for name in ("append", "score", "accept", "decode",
                                                        "collapse_per_chunk"))
        row.update({f"{name}_{suffix}": value for name, value in median.items()})
    return row


def device_info() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def code_version() -> dict:
    """Where the ``asr`` package under test lives and its commit (the flat branch, or main installed)."""
    root = Path(asr.__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"asr": str(root), "commit": commit}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = json.loads(args.output.read_text())["runs"] if args.output.exists() else {}
    for candidates in args.candidate_blocks:
        unisparse = UniSparseConfig(candidate_blocks=candidates, max_blocks=args.max_blocks)
        config = EngineConfig(attention="unique", prefill="unisparse", unisparse=unisparse,
                              dtype="float32" if args.dtype == "int8" else args.dtype,
                              int8_weights=args.dtype == "int8", device="cpu", max_batch=1, cuda_graphs=False,
                              extend_context=True,
                              max_context=max(args.contexts) + 2 * args.append + args.proposal
                              + args.reading_tokens)
        engine = LLMEngine.from_pretrained(embedded_llm_dir(), config)
        gen = torch.Generator().manual_seed(args.seed)
        cap = DistanceCap()
        engine.append(engine.new_sequence(), token_ids=[1] * 8)  # warm-up (lazy initialisation)
        rows = []
        print(f"candidate blocks {candidates}, {args.dtype}")
        print(f"{'context':>8} {'append':>13} {'score':>13} {'accept':>13} {'decode':>13} {'collapse':>13} "
              f"{'per chunk':>13} {'chunk':>13}  (wall / CPU seconds)")
        names = ("append", "score", "accept", "decode", "collapse", "collapse_per_chunk", "chunk")
        for context in args.contexts:
            row = chunk_row(engine, context, args, cap, gen)
            rows.append(row)
            cells = " ".join(f"{row[f'{n}_s']:6.3f}/{row[f'{n}_cpu_s']:6.3f}" for n in names)
            print(f"{context:8d} {cells}", flush=True)
        last_over_first = {unit: rows[-1][f"chunk_{unit}"] / rows[0][f"chunk_{unit}"]
                           for unit in ("s", "cpu_s")}
        print(f"chunk time at {rows[-1]['context']} / at {rows[0]['context']} tokens (last/first): wall "
              f"{last_over_first['s']:.2f}, CPU {last_over_first['cpu_s']:.2f}")
        label = f"{args.label} candidates {candidates}" if len(args.candidate_blocks) > 1 else args.label
        runs[label] = {"device": device_info(), "code": code_version(),
                       "args": {k: str(v) for k, v in vars(args).items()}, "candidate_blocks": candidates,
                       "rows": rows, "last_over_first": last_over_first}
        del engine
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"runs": runs}, indent=1))


if __name__ == "__main__":
    main()
