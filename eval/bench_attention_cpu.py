"""Per-layer decode attention on the CPU: dense against UNIQUE, at the embedded model's shapes.

The speech model decodes on 2-core CPUs, where attention runs through the PyTorch paths of
``asr.attention`` (no Triton). This times one layer's ``decode_attention`` for one sequence (SmolLM2-135M:
9 query heads, 3 kv heads, head dim 64, bf16 cache, page 16) over growing contexts, and writes a table,
JSON and a PNG. The bytes-moved floor of each row (K/V read, plus page statistics for UNIQUE) at the
copy bandwidth measured in the same run shows how far host overhead dominates.

    python -m eval.bench_attention_cpu --output eval/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from asr.attention import CacheShape, DecodeMetadata, PagedKVCache, UniqueConfig, decode_attention
from eval.bandwidth import copy_bandwidth
from eval.line_plot import line_plot

Q_HEADS, KV_HEADS, HEAD_DIM, PAGE = 9, 3, 64, 16
BYTES = 2  # bf16


def time_us(fn, repeats: int, blocks: int = 5) -> float:
    """Median over ``blocks`` timed blocks of ``repeats`` calls each, after a warm-up block (a shared
    2-core VM jitters by tens of percent from block to block)."""
    per_call = []
    for block in range(blocks + 1):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if block:
            per_call.append((time.perf_counter() - start) / repeats)
    return 1e6 * sorted(per_call)[len(per_call) // 2]


def bench(context: int, budgets: list[int], repeats: int, bandwidth: float) -> list[dict]:
    torch.manual_seed(context)
    cache = PagedKVCache(CacheShape(1, context // PAGE + 2, PAGE, KV_HEADS, HEAD_DIM), torch.bfloat16, "cpu")
    seq = cache.add_sequence()
    cache.write(0, torch.randn(context, KV_HEADS, HEAD_DIM), torch.randn(context, KV_HEADS, HEAD_DIM),
                cache.reserve([seq], [context]))
    metadata = DecodeMetadata(cache.page_table([seq]), cache.lengths([seq]))
    q = torch.randn(1, Q_HEADS, HEAD_DIM, dtype=torch.bfloat16)
    token_bytes = 2 * KV_HEADS * HEAD_DIM * BYTES  # K and V of one token
    stats_bytes = (context // PAGE) * KV_HEADS * 2 * HEAD_DIM * BYTES  # mean and std per page
    rows = []
    for budget in [None, *budgets]:
        sparse = (
            None if budget is None else UniqueConfig(page_size=PAGE, budget_tokens=budget, method="unique")
        )
        run = lambda: decode_attention(
            q, cache.k[0], cache.v[0], cache.key_stats[0], metadata, HEAD_DIM**-0.5, sparse, layer=1
        )
        floor_bytes = (
            context * token_bytes if budget is None else stats_bytes + min(budget, context) * token_bytes
        )
        rows.append(
            {
                "context": context,
                "budget": budget,
                "method": "dense" if budget is None else "unique",
                "time_us": round(time_us(run, repeats), 1),
                "floor_us": round(1e6 * floor_bytes / bandwidth, 1),
            }
        )
    dense = rows[0]["time_us"]
    for row in rows:
        row["speedup_vs_dense"] = round(dense / row["time_us"], 2)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    series = []
    for budget in sorted({r["budget"] for r in rows}, key=lambda b: -1 if b is None else b):
        mine = [r for r in rows if r["budget"] == budget]
        label = "dense" if budget is None else f"UNIQUE, budget {budget}"
        series.append(([r["context"] for r in mine], [r["time_us"] for r in mine], "-o", label))
    line_plot(
        series,
        path,
        "context (tokens)",
        "one layer's decode attention (us)",
        f"CPU decode attention ({torch.get_num_threads()} threads, SmolLM2 shapes, bf16)",
        log_x=True,
        log_y=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 5120, 10240, 26624, 53248])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=20, help="calls per timed block (5 blocks, median)")
    parser.add_argument("--output", type=Path, default=Path("eval/results"))
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    rows = [row for context in args.contexts for row in bench(context, args.budgets, args.repeats, bandwidth)]
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, {torch.get_num_threads()} threads")
    print(f"{'context':>8} {'method':>8} {'budget':>7} {'time us':>9} {'floor us':>9} {'vs dense':>9}")
    for r in rows:
        print(
            f"{r['context']:>8} {r['method']:>8} {r['budget'] or '-':>7} {r['time_us']:>9} "
            f"{r['floor_us']:>9} "
            f"{r['speedup_vs_dense']:>9}"
        )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench_attention_cpu.json").write_text(
        json.dumps(
            {
                "copy_bandwidth_gbs": round(bandwidth / 1e9, 2),
                "threads": torch.get_num_threads(),
                "rows": rows,
            },
            indent=1,
        )
    )
    plot(rows, args.output / "bench_attention_cpu.png")


if __name__ == "__main__":
    main()
