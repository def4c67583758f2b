"""Prefill attention: UniSparse block-sparse against dense SDPA, time and accuracy.

Per geometry, context and method, one layer's prefill attention over a paged bf16 cache:

- ``full`` (GPU): all ``context`` tokens prefilled at once, causal; dense is SDPA with the flash
  backend (``is_causal``, GQA heads expanded outside the timing).
- ``append``: the last ``--append`` tokens appended to the cached rest (a speech chunk or a QA document
  piece on a long context). Dense on the CPU is the engine's own prefill path (keys gathered from the
  pages, masked SDPA); on CUDA flash over every key without the causal mask inside the chunk (flash
  has no offset mask; a lower bound of the dense time), the accuracy against the kernel over every
  block (exact, tested against the reference).

UniSparse time is the whole op: composite scoring, block choice and the block-sparse attention (the
Triton kernels on CUDA, the PyTorch paths on the CPU); ``select_ms`` is its scoring and choice.
``block_density``: the chosen (query block, key block) pairs over the causally visible ones;
``recall``: the share of the true attention mass of sampled queries that falls in their chosen
blocks; ``out_rel_err``: ||out - dense|| / ||dense||. ``model_time_ms``: the per-layer time times the
geometry's layers (its whole prefill attention).

- ``chunk``: the whole embedded SmolLM2-135M prefilling one appended chunk of ``--append`` tokens on
  ``context`` cached ones (random keys and values written straight into the cache: diffuse attention,
  so UniSparse chooses up to its budget, its costliest case): the cost of a speech chunk late in a
  long recording, linear layers included. Time only (no accuracy columns).

Inputs: ``synthetic`` (default): keys carry the topic of their passage (passages of 256-4096
tokens), each run of 64 queries asks about its own passage (80%) or an earlier one, a sink token
every query sees; RoPE (theta 500000) on queries and keys, the topics and the sink in its slowest
half of frequencies (content matches at any distance, as in trained models). ``real``: one layer of the
embedded
SmolLM2-135M reading a real text (up to its 8k context; CPU), its own queries, keys and values.

    python -m eval.bench_prefill --device cuda                                  # H100: 32k, 64k, 128k
    python -m eval.bench_prefill --device cpu --contexts 8192 16384 32768 --modes append
    python -m eval.bench_prefill --device cpu --inputs real --contexts 8192 --modes append
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from asr.attention.block_selection import estimate_block_mass, prefill_blocks, select_blocks
from asr.attention.config import UniSparseConfig
from asr.attention.paged_cache import gather_sequence
from asr.attention.prefill import block_sparse_prefill
from asr.llm.attention import prefill_attention


@dataclass(frozen=True)
class Geometry:
    q_heads: int
    kv_heads: int
    head_dim: int
    layers: int


GEOMETRIES = {
    "llama3-8b": Geometry(32, 8, 128, 32),
    "llama3.2-1b": Geometry(32, 8, 64, 16),
    "smollm2-135m": Geometry(9, 3, 64, 30),
}
PAGE_SIZE = 16
RECALL_QUERIES = 64  # sampled query positions per row for the mass recall
ROPE_THETA = 500000.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--contexts", type=int, nargs="+", default=[32768, 65536, 131072])
    p.add_argument("--geometries", nargs="+", default=None, choices=list(GEOMETRIES),
                   help="default: llama3-8b and llama3.2-1b on CUDA, smollm2-135m on the CPU")
    p.add_argument("--modes", nargs="+", default=None, choices=["full", "append", "chunk"],
                   help="default: full and append on CUDA, append on the CPU")
    p.add_argument("--append", type=int, default=None, help="appended tokens (default: 4096 CUDA, 448 CPU)")
    p.add_argument("--inputs", default="synthetic", choices=["synthetic", "real"])
    p.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"),
                   help="text read by the embedded model for --inputs real (Python's docs appended)")
    p.add_argument("--layers", type=int, nargs="+", default=[3, 12, 21],
                   help="the embedded model's layers for --inputs real (a row each)")
    p.add_argument("--block-size", type=int, default=None, help="default: 128 on CUDA, 64 on the CPU")
    p.add_argument("--granularities", type=int, nargs="+", default=None,
                   help="composite sizes (default: the block size)")
    p.add_argument("--mass", type=float, nargs="+", default=[0.95, 0.98])
    p.add_argument("--max-blocks", type=int, default=None,
                   help="cap on chosen blocks per query block (default: none on CUDA, the engine's on the "
                   "CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("eval/results/bench_prefill.json"))
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.geometries = args.geometries or (["llama3-8b", "llama3.2-1b"] if cuda else ["smollm2-135m"])
    args.modes = args.modes or (["full", "append"] if cuda else ["append"])
    args.append = args.append or (4096 if cuda else 448)
    args.block_size = args.block_size or (128 if cuda else 64)
    args.granularities = tuple(args.granularities or (args.block_size,))
    args.max_blocks = args.max_blocks or (1 << 30 if cuda else UniSparseConfig().max_blocks)
    return args


# ------------------------------------------------------------------------------------------- inputs
def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [tokens, heads, d] at ``positions``, theta ``ROPE_THETA``."""
    half = x.shape[-1] // 2
    inv_freq = ROPE_THETA ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions[:, None].float() * inv_freq[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def synthetic_qkv(length: int, geometry: Geometry, seed: int, device: str):
    """q [length, q_heads, d], k and v [length, kv_heads, d] float32 with passage structure (module doc),
    drawn on ``device``."""
    gen = torch.Generator(device).manual_seed(seed)
    d, kv, group = geometry.head_dim, geometry.kv_heads, geometry.q_heads // geometry.kv_heads
    on = dict(generator=gen, device=device)
    sizes = torch.randint(256, 4097, (length // 256 + 1,), **on)  # passages enough to cover the context
    passage = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)[:length]
    slow = (torch.arange(d, device=device) % (d // 2)) >= d // 4  # rotate-half pairs, slowest frequencies
    topics = torch.randn(len(sizes), kv, d, **on) * slow
    topics = topics / topics.norm(dim=-1, keepdim=True) * math.sqrt(d)
    sink = torch.randn(kv, d, **on) * slow
    sink = sink / sink.norm(dim=-1, keepdim=True) * math.sqrt(d)
    keys = torch.randn(length, kv, d, **on) + 0.9 * topics[passage]
    keys[0] = 2.0 * sink
    runs = -(-length // 64)
    own = passage[torch.arange(runs, device=device) * 64]
    earlier = (torch.rand(runs, **on) * (own + 1).float()).long()
    asked = torch.where(torch.rand(runs, **on) < 0.8, own, earlier).repeat_interleave(64)[:length]
    queries = torch.randn(length, kv, group, d, **on) + (0.9 * topics[asked] + 0.3 * sink)[:, :, None]
    positions = torch.arange(length, device=device)
    q = rope(queries.view(length, kv * group, d), positions)
    return q, rope(keys, positions), torch.randn(length, kv, d, **on)


def real_qkv(args, length: int) -> dict[int, tuple]:
    """Layers ``args.layers`` of the embedded SmolLM2-135M reading ``args.text`` (and Python's
    reference docs): layer -> (q, k, v)."""
    from pydoc_data.topics import topics

    from asr.llm.embedded import embedded_llm_dir
    from eval.capture import capture_attention

    text = args.text.read_text(errors="replace") + "\n\n" + "\n\n".join(topics.values())
    captured, seq = capture_attention(str(embedded_llm_dir()), text, length)
    if seq < length:
        raise SystemExit(f"the text has only {seq} tokens; give a longer --text or a shorter context")
    return {layer: tuple(t.to(args.device) for t in captured[layer]) for layer in args.layers}


def paged(keys: torch.Tensor, values: torch.Tensor, seed: int):
    """keys, values [length, kv_heads, d] -> bf16 cache layers [pages, kv_heads, PAGE_SIZE, d] with the
    pages in shuffled order, and the page table [pages] int32."""
    length, kv, d = keys.shape
    pages = -(-length // PAGE_SIZE)
    gen = torch.Generator(keys.device).manual_seed(seed)
    table = torch.randperm(pages, generator=gen, device=keys.device).to(torch.int32)
    caches = []
    for tokens in (keys, values):
        padded = torch.zeros(pages * PAGE_SIZE, kv, d, device=tokens.device, dtype=torch.bfloat16)
        padded[:length] = tokens
        cache = torch.empty(pages, kv, PAGE_SIZE, d, device=tokens.device, dtype=torch.bfloat16)
        cache[table.long()] = padded.view(pages, PAGE_SIZE, kv, d).transpose(1, 2)
        caches.append(cache)
    return caches[0], caches[1], table


# ------------------------------------------------------------------------------------------- timing
def time_ms(fn, device: str) -> float:
    """Median milliseconds of ``fn``: triton's do_bench on CUDA, else the median of 3 runs after one."""
    if device.startswith("cuda"):
        import triton

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    fn()
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return 1e3 * sorted(runs)[1]


def sdpa_flash(q, k, v, scale, group, causal):
    """Dense attention with the flash backend: q [n, H, d], k/v [length, H_kv, d] (GQA heads expanded
    here, outside the timed call); ``causal``: q is the whole sequence. Returns (timed call, output
    [n, H, d])."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qh = q.transpose(0, 1)[None]
    kh = k.repeat_interleave(group, dim=1).transpose(0, 1)[None]
    vh = v.repeat_interleave(group, dim=1).transpose(0, 1)[None]

    def run():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale)

    return run, lambda: run()[0].transpose(0, 1)


def recall_of(q, k, start, blocks, block_size, scale) -> float:
    """Mean share of the true attention of ``RECALL_QUERIES`` sampled new queries that lies in their
    chosen blocks (q: the new queries [n, H, d]; k: every key [length, H_kv, d])."""
    n, q_heads, _ = q.shape
    rows = torch.linspace(0, n - 1, min(RECALL_QUERIES, n), device=q.device).long()
    keys = k.float().repeat_interleave(q_heads // k.shape[1], dim=1)
    logits = torch.einsum("nhd,thd->hnt", q[rows].float(), keys) * scale
    key_pos = torch.arange(k.shape[0], device=q.device)
    logits.masked_fill_(key_pos[None, None, :] > (start + rows)[None, :, None], float("-inf"))
    probs = logits.softmax(-1)
    first, _ = prefill_blocks(start, start + n, block_size)
    num_key_blocks = -(-k.shape[0] // block_size)
    chosen = torch.zeros(*blocks.shape[:2], num_key_blocks + 1, dtype=torch.bool, device=q.device)
    chosen.scatter_(-1, blocks.long().masked_fill(blocks < 0, chosen.shape[-1] - 1), True)
    chosen = chosen.repeat_interleave(q_heads // k.shape[1], dim=0)  # a kv head's blocks serve its group
    row_blocks = chosen[:, (start + rows) // block_size - first, :-1]  # [H, rows, key blocks]
    return (probs * row_blocks[:, :, key_pos // block_size]).sum(-1).mean().item()


# ------------------------------------------------------------------------------------------- rows
def bench_chunk(args, contexts: list[int]) -> list[dict]:
    """Mode ``chunk``: rows of the embedded model's whole prefill of one appended chunk per context."""
    from asr.llm.config import EngineConfig
    from asr.llm.embedded import embedded_llm_dir
    from asr.llm.engine import LLMEngine

    rows = []
    for prefill in ("dense", "unisparse"):
        config = EngineConfig(prefill=prefill, device=args.device, dtype="bfloat16", max_batch=1,
                              cuda_graphs=False, max_context=max(contexts) + args.append, extend_context=True)
        engine = LLMEngine.from_pretrained(embedded_llm_dir(), config)
        shape = engine.cache.shape
        gen = torch.Generator(args.device).manual_seed(args.seed)
        ids = torch.randint(1000, 20000, (args.append,), generator=gen, device=args.device)
        chunk = engine.embed_tokens(ids)
        for context in contexts:
            seq = engine.new_sequence()
            slots = engine.cache.reserve([seq.seq_id], [context])
            for layer in range(shape.num_layers):
                k, v = torch.randn(2, context, shape.num_kv_heads, shape.head_dim, generator=gen,
                                   device=args.device)
                engine.cache.write(layer, k, v, slots)
            seq.num_tokens = context

            def run(seq=seq, context=context):
                engine.append(seq, embeds=chunk)
                engine.truncate(seq, context)

            rows.append(dict(geometry="smollm2-135m", context=context, mode="chunk", queries=args.append,
                             layer=None, inputs="random cache", device=device_name(args.device),
                             method=f"engine-{prefill}", time_ms=time_ms(run, args.device),
                             block_size=config.unisparse.block_size))
            engine.free(seq)
    for row in rows:
        dense = next(r for r in rows if r["context"] == row["context"] and r["method"] == "engine-dense")
        row.update(speedup_vs_sdpa=dense["time_ms"] / row["time_ms"], block_density=float("nan"),
                   recall=float("nan"), out_rel_err=float("nan"), model_time_ms=row["time_ms"])
    return rows


def bench_case(args, geometry_name: str, context: int, mode: str, qkv, layer: int | None) -> list[dict]:
    geometry = GEOMETRIES[geometry_name]
    q_all, k_all, v_all = (t.to(torch.bfloat16) for t in qkv)
    start = 0 if mode == "full" else context - args.append
    q = q_all[start:context].contiguous()
    k_cache, v_cache, page_table = paged(k_all[:context], v_all[:context], args.seed)
    scale = geometry.head_dim**-0.5
    group = geometry.q_heads // geometry.kv_heads
    base = dict(geometry=geometry_name, context=context, mode=mode, queries=q.shape[0], inputs=args.inputs,
                layer=layer, device=device_name(args.device), block_size=args.block_size)
    if args.device.startswith("cuda"):
        run, output = sdpa_flash(q, k_all[:context], v_all[:context], scale, group, causal=mode == "full")
        dense_name = "sdpa-flash"
        if mode == "append":  # flash has no offset causal mask: timed without one (a lower bound), and
            def output():  # the exact output from the kernel over every block
                every = UniSparseConfig(block_size=args.block_size, granularities=(args.block_size,),
                                        mass=1.0, max_blocks=1 << 30, min_context=0)
                shares = estimate_block_mass(q, k_cache, page_table, start, scale, every)
                blocks, _ = select_blocks(shares, start, context, every)
                return block_sparse_prefill(q, k_cache, v_cache, page_table, start, scale, blocks,
                                            args.block_size)
    else:
        def run():
            keys = gather_sequence(k_cache, page_table, context)
            values = gather_sequence(v_cache, page_table, context)
            return prefill_attention(q, keys, values, start, scale)

        output, dense_name = run, "sdpa-masked"
    dense_ms = time_ms(run, args.device)
    dense_out = output().float()
    rows = [dict(base, method=dense_name, time_ms=dense_ms, speedup_vs_sdpa=1.0, block_density=1.0,
                 recall=1.0,
                 out_rel_err=0.0, model_time_ms=dense_ms * geometry.layers)]
    for mass in args.mass:
        config = UniSparseConfig(block_size=args.block_size, granularities=args.granularities, mass=mass,
                                 max_blocks=args.max_blocks, min_context=0)

        def choose():
            shares = estimate_block_mass(q, k_cache, page_table, start, scale, config)
            return select_blocks(shares, start, context, config)

        blocks, counts = choose()

        def whole():
            chosen, _ = choose()
            return block_sparse_prefill(q, k_cache, v_cache, page_table, start, scale, chosen,
                                        args.block_size)

        total_ms = time_ms(whole, args.device)
        select_ms = time_ms(choose, args.device)
        out = whole().float()
        first, num_query_blocks = prefill_blocks(start, context, args.block_size)
        visible = (first + torch.arange(num_query_blocks, device=q.device) + 1).float()
        rows.append(dict(
            base, method=f"unisparse-p{mass:g}"
            + (f"-k{args.max_blocks}" if args.max_blocks < 1 << 30 else ""),
            time_ms=total_ms, select_ms=select_ms, speedup_vs_sdpa=dense_ms / total_ms,
            block_density=(counts.float().sum() / (visible.sum() * counts.shape[0])).item(),
            recall=recall_of(q, k_all[:context], start, blocks, args.block_size, scale),
            out_rel_err=((out - dense_out).norm() / dense_out.norm()).item(),
            model_time_ms=total_ms * geometry.layers,
        ))
    return rows


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {torch.get_num_threads()} threads"


def table(rows: list[dict]) -> str:
    lines = [f"{'geometry':<13} {'layer':>5} {'context':>7} {'mode':<6} {'method':<22} {'ms':>9} "
             f"{'select':>7} "
             f"{'speedup':>7} {'density':>7} {'recall':>7} {'err':>7} {'model ms':>9}"]
    for r in rows:
        layer = "-" if r["layer"] is None else r["layer"]
        lines.append(f"{r['geometry']:<13} {layer:>5} {r['context']:>7} {r['mode']:<6} {r['method']:<22} "
                     f"{r['time_ms']:>9.2f} "
                     f"{r.get('select_ms', 0):>7.2f} {r['speedup_vs_sdpa']:>7.2f} {r['block_density']:>7.3f} "
                     f"{r['recall']:>7.4f} {r['out_rel_err']:>7.4f} {r['model_time_ms']:>9.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    rows: list[dict] = []
    if "chunk" in args.modes:
        rows += bench_chunk(args, args.contexts)
        args.modes = [mode for mode in args.modes if mode != "chunk"]
    for geometry_name in args.geometries:
        geometry = GEOMETRIES[geometry_name]
        for context in args.contexts:
            if args.inputs == "real":
                if geometry_name != "smollm2-135m":
                    raise SystemExit("--inputs real reads the embedded SmolLM2-135M: add --geometries "
                                     "smollm2-135m")
                layers = real_qkv(args, context)
            else:
                layers = {None: synthetic_qkv(context, geometry, args.seed + context, args.device)}
            for (layer, qkv), mode in itertools.product(layers.items(), args.modes):
                try:
                    rows += bench_case(args, geometry_name, context, mode, qkv, layer)
                except (RuntimeError, torch.OutOfMemoryError) as error:  # the other rows still run
                    print(f"{geometry_name} {context} {mode}: failed: {error}", flush=True)
                    continue
                print(table(rows[-1 - len(args.mass):]), flush=True)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(rows, indent=1))  # partial results survive a time limit
            del layers
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=1))
    print("\n" + table(rows))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
