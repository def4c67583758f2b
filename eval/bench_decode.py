"""End-to-end decode speed of the engine: dense vs UNIQUE top-k pages, against the bytes-moved floor.

A Llama-3.2-1B-shaped model with random weights (speed does not depend on the values) decodes greedily
from B sequences in an engine of ``context`` tokens whose caches hold all but the decode room (``cached``
in the rows) of random keys/values (filled directly, with exact page statistics: a 128k prefill would only
cost time). Each setting times ``--steps`` decode steps of
``LLMEngine.generate_many`` (CUDA-graph step, sampling, host loop: what a user waits for) after warm-up.

Floor of one step = bytes that must cross device memory / measured device-to-device copy bandwidth
(bytes read + written per second):
  dense:  every weight once + every cached K/V of every sequence;
  unique: every weight once + mean/std page statistics of every page + K/V of the chosen pages.

The transformers baseline (B=1, the ``HF ms`` column) runs in the same process on the same device with
the same geometry and cached tokens: ``LlamaForCausalLM`` with SDPA and a static cache, one eager forward
per token (``--no-transformers`` skips it).

    python -m eval.bench_decode                      # H100: 16k..128k, B in {1, 8}
    python -m eval.bench_decode --device cpu --model tiny --contexts 512 1024 --steps 4   # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from asr.attention import UniqueConfig
from asr.attention.page_stats import page_key_stats
from asr.llm.config import EngineConfig, ModelConfig, SamplingParams
from asr.llm.engine import LLMEngine
from asr.llm.loader import random_model
from eval.bandwidth import copy_bandwidth
from eval.bench_attention import apply_overrides, best_overrides

log = logging.getLogger("bench_decode")

MODELS = {
    # Llama-3.2-1B: 16 layers, hidden 2048, GQA 32:8, head_dim 64, tied 128256-token embedding
    "llama-3.2-1b": ModelConfig(
        "llama", 128256, 2048, 8192, 16, 32, 8, 64, 1e-5, 131072, tie_word_embeddings=True
    ),
    "tiny": ModelConfig("llama", 1024, 128, 256, 2, 4, 2, 64, 1e-5, 8192, tie_word_embeddings=True),
}
HF_PREFILL_CHUNK = 4096  # tokens per forward when filling the transformers baseline's cache
STATS_READ_BY_UNIQUE = 2  # mean and std rows of a page's key statistics


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama-3.2-1b", choices=sorted(MODELS))
    parser.add_argument("--contexts", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--budget", type=int, default=2048, help="UNIQUE tokens read per step and kv head")
    parser.add_argument("--page-size", type=int, default=64, help="tokens per KV page (BENCHMARKS.md)")
    parser.add_argument("--steps", type=int, default=32, help="timed decode steps per setting")
    parser.add_argument("--warmup", type=int, default=16, help="untimed decode steps per setting")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-graphs", action="store_true", help="eager decode (no CUDA graphs)")
    parser.add_argument(
        "--output", type=Path, default=Path("eval/results"), help="directory for bench_decode.json"
    )
    parser.add_argument(
        "--no-transformers",
        action="store_true",
        help="skip the transformers baseline (B=1, SDPA + static cache, measured in this run)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                        help="override an attention kernel tuning constant (as eval.bench_attention --set)")
    parser.add_argument("--set-from-sweep", type=Path, default=None, metavar="SWEEP_JSON",
                        help="also apply the overrides an eval.bench_attention sweep found faster")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile each setting's steps: device busy time per step and its top kernels",
    )
    return parser.parse_args(argv)


def fill_random_context(engine: LLMEngine, seqs, context: int, seed: int = 0) -> None:
    """Give each sequence ``context`` cached tokens of random K/V (exact page statistics)."""
    cache = engine.cache
    gen = torch.Generator(cache.k.device).manual_seed(seed)
    for seq in seqs:
        cache.reserve([seq.seq_id], [context])
        seq.num_tokens, seq.token_ids = context, [None] * context
        seq.next_logits = torch.zeros(engine.model_config.vocab_size, device=cache.k.device)
    pages = torch.tensor(sorted(p for s in seqs for p in cache.pages(s.seq_id)), device=cache.k.device)
    fill = torch.full((8192,), cache.page_size, device=cache.k.device)
    for layer in range(cache.shape.num_layers):
        for chunk in pages.split(8192):
            shape = (len(chunk), *cache.k.shape[2:])
            cache.k[layer, chunk] = torch.randn(
                shape, generator=gen, device=chunk.device, dtype=cache.k.dtype
            )
            cache.v[layer, chunk] = torch.randn(
                shape, generator=gen, device=chunk.device, dtype=cache.v.dtype
            )
            stats = page_key_stats(cache.k[layer, chunk], fill[: len(chunk)])
            cache.key_stats[layer, chunk] = stats.to(cache.key_stats.dtype)
    roll_back(engine, seqs, context)  # the last page of each sequence is partial when context % page_size


def roll_back(engine: LLMEngine, seqs, context: int) -> None:
    """Cut every sequence back to ``context`` cached tokens, ready to decode (zero next logits)."""
    for seq in seqs:
        engine.truncate(seq, context)
        seq.next_logits = torch.zeros(engine.model_config.vocab_size, device=engine.device)


def floor_bytes(
    model: torch.nn.Module,
    config: ModelConfig,
    batch: int,
    context: int,
    sparse: UniqueConfig | None,
    page_size: int,
    kv_bytes: int,
) -> dict:
    """Bytes one decode step must move: weights once, plus dense K/V or page stats + chosen pages."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    per_token_kv = config.num_layers * config.num_kv_heads * config.head_dim * 2 * kv_bytes
    if sparse is None:
        return dict(weights=weights, kv=batch * context * per_token_kv, stats=0)
    pages = math.ceil(context / page_size)
    stats = (
        batch
        * pages
        * config.num_layers
        * config.num_kv_heads
        * STATS_READ_BY_UNIQUE
        * config.head_dim
        * kv_bytes
    )
    chosen = min(pages, sparse.num_select) * page_size
    return dict(weights=weights, kv=batch * chosen * per_token_kv, stats=stats)


def time_decode(engine: LLMEngine, seqs, steps: int, warmup: int) -> float:
    """Seconds per decode step of ``generate_many`` over ``seqs`` (rolled back afterwards)."""
    context = seqs[0].num_tokens
    params = [SamplingParams(max_tokens=warmup, ignore_eos=True)] * len(seqs)
    engine.generate_many(seqs, params)
    timed = [SamplingParams(max_tokens=steps, ignore_eos=True)] * len(seqs)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = engine.generate_many(seqs, timed)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if any(len(tokens) != steps for tokens in outputs):
        raise RuntimeError(f"decoded {[len(t) for t in outputs]} tokens instead of {steps} (context limit?)")
    roll_back(engine, seqs, context)
    # generate_many feeds every returned token: ``steps`` forwards (the first token comes from next_logits)
    return elapsed / steps


def time_transformers_decode(config: ModelConfig, cached: int, steps: int, warmup: int, device: torch.device,
                             dtype: torch.dtype, rope_theta: float = 500000.0) -> float:
    """Seconds per decode step of the transformers baseline at batch 1: the same geometry as a
    ``LlamaForCausalLM`` with random weights, SDPA attention and a static cache of ``cached + warmup +
    steps`` positions, filled by a chunked prefill, then one eager forward per token (greedy), as
    ``generate`` with a static cache runs without ``torch.compile``."""
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=max(config.max_context, cached + warmup + steps),
        rope_theta=rope_theta,
        tie_word_embeddings=config.tie_word_embeddings,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(hf_config).to(dtype).eval()
    cache = StaticCache(config=hf_config, max_cache_len=cached + warmup + steps)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, config.vocab_size, (1, cached), generator=generator).to(device)

    def forward(token_ids: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + token_ids.shape[1], device=device)
        out = model(input_ids=token_ids, past_key_values=cache, cache_position=positions, use_cache=True,
                    logits_to_keep=1)
        return out.logits[:, -1].argmax(dim=-1, keepdim=True)

    with torch.inference_mode():
        for start in range(0, cached, HF_PREFILL_CHUNK):
            token = forward(tokens[:, start : start + HF_PREFILL_CHUNK], start)
        position = cached
        for _ in range(warmup):
            token, position = forward(token, position), position + 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        start_s = time.perf_counter()
        for _ in range(steps):
            token, position = forward(token, position), position + 1
        token.cpu()  # waits for the last step
        elapsed = time.perf_counter() - start_s
    return elapsed / steps  # the model and its cache are freed on return


def profile_decode(engine: LLMEngine, seqs, steps: int, top: int = 12) -> dict:
    """Kernel time of ``steps`` decode steps (torch.profiler): device-busy ms and kernels per step, and
    the ``top`` kernels by time. Busy time below the step's wall time is the device waiting for the host."""
    from torch.profiler import ProfilerActivity, profile

    context = seqs[0].num_tokens
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate_many(seqs, [SamplingParams(max_tokens=steps, ignore_eos=True)] * len(seqs))
        torch.cuda.synchronize()
    roll_back(engine, seqs, context)
    kernels = [
        e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0
    ]
    kernels.sort(key=lambda e: -e.self_device_time_total)
    return dict(
        busy_ms_per_step=sum(e.self_device_time_total for e in kernels) / 1e3 / steps,
        kernels_per_step=sum(e.count for e in kernels) / steps,
        top=[
            dict(name=e.key[:90], per_step=e.count / steps, us_per_step=e.self_device_time_total / steps)
            for e in kernels[:top]
        ],
    )


def run(args) -> tuple[list[dict], dict]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # random weights: let the engine serve the longest context asked for whatever the real limit. An engine of
    # ``context`` tokens holds ``context - margin`` cached ones and decodes into the rest (as a model at its
    # limit would: its graph page tables are sized for ``context``)
    margin = args.steps + args.warmup + 8
    model_config = replace(
        MODELS[args.model], max_context=max(MODELS[args.model].max_context, max(args.contexts))
    )
    bandwidth = copy_bandwidth(device)
    model = random_model(model_config, device, dtype)
    sparse = UniqueConfig(page_size=args.page_size, budget_tokens=args.budget)
    rows, hf_ms = [], {}
    for context in sorted(args.contexts):
        config = EngineConfig(
            attention="dense", sparse=sparse, device=str(device), max_context=context,
            max_batch=max(args.batches), cuda_graphs=not args.no_graphs,
        )
        engine = LLMEngine(model, config)
        seqs = [engine.new_sequence() for _ in range(max(args.batches))]
        fill_random_context(engine, seqs, context - margin, seed=context)
        for attention in ("dense", "unique"):
            engine.set_attention(attention, sparse)
            for batch in args.batches:
                step_s = time_decode(engine, seqs[:batch], args.steps, args.warmup)
                moved = floor_bytes(
                    model,
                    model_config,
                    batch,
                    context - margin,
                    None if attention == "dense" else sparse,
                    args.page_size,
                    engine.cache.k.element_size(),
                )
                floor_s = sum(moved.values()) / bandwidth
                rows.append(
                    dict(
                        context=context,
                        cached=context - margin,
                        batch=batch,
                        attention=attention,
                        ms_per_step=step_s * 1e3,
                        tokens_per_s=batch / step_s,
                        floor_ms=floor_s * 1e3,
                        over_floor=step_s / floor_s,
                        bytes_weights=moved["weights"],
                        bytes_kv=moved["kv"],
                        bytes_stats=moved["stats"],
                        budget=args.budget if attention == "unique" else None,
                    )
                )
                if args.profile and device.type == "cuda":
                    rows[-1]["profile"] = profile_decode(engine, seqs[:batch], args.steps)
                log.info("%s", rows[-1])
        del engine, seqs
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if 1 in args.batches and not args.no_transformers:
            hf_ms[context] = 1e3 * time_transformers_decode(
                model_config, context - margin, args.steps, args.warmup, device, dtype
            )
            log.info("transformers, context %d, B=1: %.2f ms/step", context, hf_ms[context])
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for row in rows:
        if row["attention"] == "unique":
            dense = next(r for r in rows if r["attention"] == "dense" and r["context"] == row["context"]
                         and r["batch"] == row["batch"])
            row["speedup_vs_dense"] = dense["ms_per_step"] / row["ms_per_step"]
        row["hf_sdpa_static_ms"] = hf_ms.get(row["context"]) if row["batch"] == 1 else None
    meta = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        copy_bandwidth_tbs=bandwidth / 1e12,
        torch=torch.__version__,
        model=args.model,
        model_config=asdict(model_config),
        dtype=str(dtype),
        page_size=args.page_size,
        budget=args.budget,
        steps=args.steps,
        cuda_graphs=not args.no_graphs,
        hf_note="transformers LlamaForCausalLM, SDPA + static cache, eager decode, B=1, measured in this "
        "run on the same device and cached tokens",
    )
    return rows, meta


def table(rows: list[dict]) -> str:
    lines = [
        "| context | B | attention | ms/step | tokens/s | floor ms | x floor | unique speed-up | HF ms (B=1) "
        "|",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        speedup = f"{r['speedup_vs_dense']:.2f}x" if r.get("speedup_vs_dense") else ""
        anchor = f"{r['hf_sdpa_static_ms']:.1f}" if r.get("hf_sdpa_static_ms") else ""
        lines.append(
            f"| {r['context']} | {r['batch']} | {r['attention']} | {r['ms_per_step']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {r['floor_ms']:.2f} | {r['over_floor']:.2f} | {speedup} | {anchor} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.set_from_sweep is not None:
        args.set = args.set + best_overrides(json.loads(args.set_from_sweep.read_text()))
    apply_overrides(args.set)
    rows, meta = run(args)
    meta["overrides"] = args.set
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench_decode.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(
        f"\n{meta['device']}, copy bandwidth {meta['copy_bandwidth_tbs']:.2f} TB/s, budget {args.budget} "
        "tokens, "
        f"page {args.page_size}, {meta['dtype']}, CUDA graphs {meta['cuda_graphs']}"
    )
    print(table(rows))
    for row in rows:
        if "profile" in row:
            prof = row["profile"]
            print(
                f"\n{row['context']} B={row['batch']} {row['attention']}: {row['ms_per_step']:.2f} ms/step, "
                "device busy "
                f"{prof['busy_ms_per_step']:.2f} ms, {prof['kernels_per_step']:.0f} kernels/step"
            )
            for kernel in prof["top"]:
                print(f"  {kernel['us_per_step']:8.1f} us {kernel['per_step']:6.1f}x  {kernel['name']}")


if __name__ == "__main__":
    main()
