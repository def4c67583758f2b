"""Per-layer decode attention time: dense SDPA vs our paged kernels vs UNIQUE (select + attend).

Every method runs as a CUDA graph replay (as the engine runs a decode step) and is timed with
``triton.testing.do_bench`` (median, L2 flushed before each replay). The bytes-moved floor of
UNIQUE is the page statistics its scorer reads plus the chosen K/V pages; of dense attention,
the whole K/V. Floors are converted to time with the device-to-device copy bandwidth measured
in the same run (bytes read + written over time).

Methods per (context, batch, page size, budget): ``unique_total`` (the step the engine runs:
the scoring kernel that also selects, decode over the chosen pages and its merge), its parts
``unique_select`` (scoring with selection, one launch) and ``unique_attend`` (decode over given
pages), for comparison ``unique_score`` (scoring alone) and ``unique_topk`` (the standalone top-k
kernel on given scores), ``quest_total``; per (context, batch, page size) ``dense_paged`` and per
(context, batch) ``sdpa``; with --parts at the longest context and smallest batch also
``read_same_bytes`` (one ``torch.sum`` over as many bytes as the step reads, in a graph: the
practical floor of a launch that reads that much).

    python -m eval.bench_attention                       # the full grid, writes JSON + PNG
    python -m eval.bench_attention --contexts 131072 --batches 1 --budgets 2048
    python -m eval.bench_attention --compile-only --compile-workers 12           # compile in parallel first
    python -m eval.bench_attention --parts --tune --compile-workers 12           # sweep, then the grid
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
from pathlib import Path

import torch

from asr.attention.config import UniqueConfig
from asr.attention.page_stats import page_key_stats
from eval.bandwidth import copy_bandwidth

log = logging.getLogger("bench_attention")

STAT_ROWS_READ = 2  # mean+std (unique) or min+max (quest) per page and kv head
SDPA_BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION")  # EFFICIENT_ATTENTION takes no GQA decode


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--budgets", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--page-sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument(
        "--max-tokens", type=int, default=32 * 131072, help="skip batch*context above this (memory)"
    )
    p.add_argument("--warmup-ms", type=float, default=10.0)
    p.add_argument("--rep-ms", type=float, default=40.0)
    p.add_argument("--parts", action="store_true",
                   help="at the longest context and smallest batch also time read_same_bytes (a library read "
                        "of as many bytes as the step reads)")
    p.add_argument("--output", type=Path, default=Path("eval/results/bench_attention.json"))
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: JSON path with .png)")
    p.add_argument("--sweep", action="store_true",
                   help="instead of the grid: time tuning variants (SWEEP) at the first context/batch/budget")
    p.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                   help="override a kernel tuning constant, e.g. decode.TOKENS_PER_TILE=128")
    p.add_argument("--set-from-sweep", type=Path, default=None, metavar="SWEEP_JSON",
                   help="also apply the overrides a --sweep run found faster (best_overrides)")
    p.add_argument("--tune", action="store_true",
                   help="run the sweep first (JSON beside --output) and the grid with its best overrides")
    p.add_argument("--compile-workers", type=int, default=0,
                   help="compile every kernel variant first in this many processes (small page pools); with "
                        "--set-from-sweep only when the sweep changed a constant")
    p.add_argument("--compile-only", action="store_true",
                   help="only compile the grid's kernels (and with --tune the sweep's), then exit")
    return p.parse_args(argv)


def apply_overrides(overrides: list[str]) -> list[tuple]:
    """Set kernel tuning constants (``module.NAME=value``); returns what ``restore`` needs."""
    import importlib

    saved = []
    for item in overrides:
        name, value = item.split("=")
        module_name, const = name.rsplit(".", 1)
        module = importlib.import_module(f"asr.attention.kernels.{module_name}")
        saved.append((module, const, getattr(module, const)))
        setattr(module, const, type(getattr(module, const))(value))
        log.info("override %s = %s", name, value)
    return saved


def restore(saved: list[tuple]) -> None:
    for module, const, value in reversed(saved):
        setattr(module, const, value)


SWEEP = [[], ["scoring.ONE_HEAD_SELECT_PROGRAMS_PER_SM=2"], ["scoring.ONE_HEAD_SELECT_PROGRAMS_PER_SM=1"],
         ["scoring.CANDIDATES_PER_PROGRAM=4"], ["scoring.CANDIDATES_PER_PROGRAM=16"],
         ["scoring.FUSED_SELECT_MAX_HEADS=8"],
         ["scoring.FUSED_SELECT_MAX_HEADS=8", "scoring.ALL_HEADS_SELECT_PROGRAMS_PER_SM=1"],
         ["decode.PROGRAMS_PER_SM=1"], ["decode.TOKENS_PER_TILE=128"]]


def graph_floor_us(args) -> float:
    """Replay time of a graph holding one tiny kernel: the timing floor of any graph here."""
    x = torch.zeros(32, device="cuda")
    return bench_graph(lambda: x.add_(1), args.warmup_ms, args.rep_ms)


def step_functions(q, k_cache, v_cache, key_stats, page_table, seq_lens, scale, config) -> dict:
    """The UNIQUE decode step and its parts at one shape, as graph-capturable callables:
    select (the scoring kernel that selects), attend (decode over given chosen pages and their
    physical ids, and its merge), total (select, attend: what the engine runs), and for comparison
    score (scoring alone) and topk (the standalone top-k kernel on given scores)."""
    from asr.attention.kernels.decode import paged_decode_triton
    from asr.attention.kernels.scoring import score_pages_triton, score_select_triton
    from asr.attention.kernels.selection import select_pages_triton

    scores, chosen, physical = score_select_triton(q, key_stats, page_table, seq_lens, config)

    def select():
        return score_select_triton(q, key_stats, page_table, seq_lens, config)

    def score():
        return score_pages_triton(q, key_stats, page_table, seq_lens, config)

    def topk():
        return select_pages_triton(scores, seq_lens, page_table, config.page_size, config.num_select,
                                   config.sink_pages, config.local_pages)

    def attend(picked=chosen, picked_physical=physical):
        return paged_decode_triton(q, k_cache, v_cache, page_table, seq_lens, scale, picked, picked_physical)

    return dict(select=select, score=score, topk=topk, attend=attend, total=lambda: attend(*select()[1:]))


def sweep(args) -> list[dict]:
    """Time the step and its parts at the first context and budget, for every batch and page size
    asked, for each override set in SWEEP."""
    context, budget = args.contexts[0], args.budgets[0]
    if args.compile_workers:
        compile_all(sweep_tasks(args), args.compile_workers)
    print({"graph_floor_us": round(graph_floor_us(args), 2)}, flush=True)
    hq, hkv, d = args.q_heads, args.kv_heads, args.head_dim
    results = []
    for batch, page_size in [(b, p) for b in args.batches for p in args.page_sizes]:
        q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
        k_cache, v_cache, key_stats, page_table, seq_lens = make_paged_cache(
            batch, context, hkv, d, page_size
        )
        config = UniqueConfig(page_size=page_size, budget_tokens=budget)
        for variant in SWEEP:
            saved = apply_overrides(variant)
            fns = step_functions(
                q, k_cache, v_cache, key_stats, page_table, seq_lens, 1 / math.sqrt(d), config
            )
            row = dict(variant=",".join(variant) or "base", page_size=page_size, context=context, batch=batch,
                       budget=budget)
            for part in ("select", "attend", "total"):
                try:
                    row[part] = round(bench_graph(fns[part], args.warmup_ms, args.rep_ms), 2)
                except Exception as err:  # a variant that fails to compile or capture
                    log.warning("%s %s failed: %r", row["variant"], part, err)
                    row[part] = math.inf
                    torch.cuda.synchronize()
            row["check_ok"] = verify(q, k_cache, v_cache, key_stats, page_table, seq_lens, 1 / math.sqrt(d),
                                     config, context, batch)["ok"]
            restore(saved)
            results.append(row)
            print(row, flush=True)
        del k_cache, v_cache, key_stats
        torch.cuda.empty_cache()
    return results


def bench_graph(fn, warmup_ms: float, rep_ms: float) -> float:
    """Median microseconds of one replay of ``fn`` captured in a CUDA graph."""
    import triton.testing

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(graph.replay, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    del graph
    return ms * 1e3


def make_paged_cache(batch, context, kv_heads, head_dim, page_size, gen_seed=0, pool_pages=None):
    """Random bf16 paged cache with scattered pages and exact key statistics. pool_pages: a pool
    of that many pages that every page-table entry points into (the shapes and strides of the
    full cache at a fraction of its memory: for compiling, not timing)."""
    pages_per_seq = context // page_size
    num_pages = batch * pages_per_seq if pool_pages is None else pool_pages
    torch.manual_seed(gen_seed)
    k_cache = torch.randn(num_pages, kv_heads, page_size, head_dim, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    key_stats = torch.empty(num_pages, kv_heads, 4, head_dim, device="cuda", dtype=torch.bfloat16)
    chunk = 1 << 15
    for start in range(0, num_pages, chunk):
        pages = k_cache[start : start + chunk]
        fill = torch.full((pages.shape[0],), page_size, device="cuda")
        key_stats[start : start + chunk] = page_key_stats(pages, fill).to(torch.bfloat16)
    if pool_pages is None:
        page_table = torch.randperm(num_pages, device="cuda").to(torch.int32).view(batch, pages_per_seq)
    else:
        page_table = torch.randint(0, pool_pages, (batch, pages_per_seq), device="cuda", dtype=torch.int32)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    return k_cache, v_cache, key_stats, page_table, seq_lens


COMPILE_POOL_PAGES = 64


def compile_task(task) -> str:
    """Run every kernel variant one grid point uses once (Triton compiles it into its on-disk cache)."""
    overrides, context, batch, page_size, budgets, hq, hkv, d = task
    from asr.attention.kernels.decode import paged_decode_triton

    saved = apply_overrides(overrides)
    k_cache, v_cache, key_stats, page_table, seq_lens = make_paged_cache(batch, context, hkv, d, page_size,
                                                                         pool_pages=COMPILE_POOL_PAGES)
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    scale = 1 / math.sqrt(d)
    paged_decode_triton(q, k_cache, v_cache, page_table, seq_lens, scale)
    for budget in budgets:
        for method in ("unique", "quest"):
            config = UniqueConfig(page_size=page_size, budget_tokens=budget, method=method)
            fns = step_functions(q, k_cache, v_cache, key_stats, page_table, seq_lens, scale, config)
            for fn in fns.values():
                fn()
            verify(q, k_cache, v_cache, key_stats, page_table, seq_lens, scale, config, context, batch)
    torch.cuda.synchronize()
    restore(saved)
    return f"compiled {overrides or 'base'} ctx={context} B={batch} P={page_size}"


def compile_all(tasks: list, workers: int) -> None:
    """Compile the kernels of many grid points in parallel processes: timing then loads them from
    Triton's cache instead of compiling one after another."""
    import multiprocessing
    import time

    start = time.time()
    try:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for message in pool.imap_unordered(compile_task, tasks):
                log.info("%s (%.0f s)", message, time.time() - start)
    except Exception as err:  # timing still compiles what is missing, one kernel after another
        log.warning("parallel compile failed after %.0f s: %r", time.time() - start, err)


def grid_tasks(args, overrides=None) -> list:
    return [(overrides if overrides is not None else args.set, context, batch, page_size,
             [b for b in args.budgets if b < context], args.q_heads, args.kv_heads, args.head_dim)
            for context in args.contexts for batch in args.batches if batch * context <= args.max_tokens
            for page_size in args.page_sizes]


def sweep_tasks(args) -> list:
    context, budget = args.contexts[0], args.budgets[0]
    return [
        (variant, context, batch, page_size, [budget], args.q_heads, args.kv_heads, args.head_dim)
        for variant in SWEEP[1:] for batch in args.batches for page_size in args.page_sizes
    ]


def best_overrides(sweep_rows: list[dict], margin: float = 0.05) -> list[str]:
    """From a sweep: the variants whose step beats the base by more than ``margin`` on average over
    the swept shapes (geometric mean of time ratios) and is slower at none by more than ``margin``,
    fastest first, each kept only if it sets none of the constants a faster kept one sets; their
    overrides."""
    base = {(r["batch"], r["page_size"]): r["total"] for r in sweep_rows if r["variant"] == "base"}
    ratios: dict[str, list[float]] = {}
    for r in sweep_rows:
        if r["variant"] != "base":
            ratios.setdefault(r["variant"], []).append(r["total"] / base[(r["batch"], r["page_size"])])
    faster = sorted((math.exp(sum(map(math.log, v)) / len(v)), name) for name, v in ratios.items()
                    if math.exp(sum(map(math.log, v)) / len(v)) < 1 - margin and max(v) < 1 + margin)
    chosen: list[str] = []
    for _, variant in faster:
        items = variant.split(",")
        if not {item.split("=")[0] for item in items} & {item.split("=")[0] for item in chosen}:
            chosen += items
    return chosen


def verify(q, k_cache, v_cache, key_stats, page_table, seq_lens, scale, config, context, batch) -> dict:
    """Check the timed kernels at this size: the selection of the scoring kernel against the
    reference top-k of its scores (summed score of the chosen pages), its physical ids against the
    page table, and the decode over its pages against the fp32 reference over the same pages."""
    from asr.attention.decode import paged_decode_reference
    from asr.attention.kernels.decode import paged_decode_triton
    from asr.attention.kernels.scoring import score_select_triton
    from asr.attention.selection import select_pages_reference

    scores, chosen, physical = score_select_triton(q, key_stats, page_table, seq_lens, config)
    expected = select_pages_reference(scores, seq_lens, config)
    out, _ = paged_decode_triton(q, k_cache, v_cache, page_table, seq_lens, scale, chosen, physical)

    def picked(pages):
        return scores.gather(-1, pages.long().clamp(min=0)).masked_fill(pages < 0, 0).double()

    selection_rel_gap = (picked(chosen).sum(-1) - picked(expected).sum(-1)).abs() / picked(
        expected
    ).abs().sum(-1)
    want_physical = (
        page_table.gather(1, chosen.clamp(min=0).flatten(1)).view(chosen.shape).masked_fill(chosen < 0, -1)
    )
    ref, _ = paged_decode_reference(q.float(), k_cache, v_cache, page_table, seq_lens, scale, chosen)
    check = dict(context=context, batch=batch, page_size=config.page_size, budget=config.budget_tokens,
                 selection_rel_gap=float(selection_rel_gap.max()),
                 physical_ok=bool(torch.equal(physical, want_physical)),
                 decode_rel_rms=float((out.float() - ref).norm() / ref.norm()))
    check["ok"] = bool(
        check["selection_rel_gap"] < 1e-5
        and check["physical_ok"]
        and check["decode_rel_rms"] < 1e-2
        and not torch.isnan(out).any()
    )
    if not check["ok"]:
        log.warning("CHECK FAILED %s", check)
    return check


def sdpa_time(q, k_dense, v_dense, scale, args) -> tuple[float, str]:
    """Best SDPA backend on contiguous [batch, kv_heads, context, d] K/V with GQA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best = (math.inf, "none")
    q4 = q[:, :, None, :]
    for name in SDPA_BACKENDS:
        backend = getattr(SDPBackend, name)

        def run():
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(q4, k_dense, v_dense, scale=scale,
                                                                        enable_gqa=True)

        try:
            run()
            torch.cuda.synchronize()
            t = bench_graph(run, args.warmup_ms, args.rep_ms)
        except Exception as err:  # a backend that does not take these shapes
            log.info("SDPA %s unavailable: %s", name, str(err).splitlines()[0][:120])
            torch.cuda.synchronize()
            continue
        log.info("SDPA %s: %.1f us", name, t)
        best = min(best, (t, name))
    return best


def run(args) -> tuple[list[dict], dict]:
    from asr.attention.kernels.decode import paged_decode_triton

    apply_overrides(args.set)
    if args.compile_workers:
        compile_all(grid_tasks(args), args.compile_workers)
    bandwidth = copy_bandwidth("cuda")
    graph_floor = graph_floor_us(args)
    device = torch.cuda.get_device_name()
    log.info("%s, copy bandwidth %.2f TB/s, graph floor %.2f us", device, bandwidth / 1e12, graph_floor)
    hq, hkv, d = args.q_heads, args.kv_heads, args.head_dim
    scale = 1 / math.sqrt(d)
    elem = 2  # bf16
    rows: list[dict] = []
    checks: list[dict] = []

    def add(context, batch, budget, page_size, method, time_us, sdpa_us, floor_bytes=None, **extra):
        row = dict(context=context, batch=batch, budget=budget, page_size=page_size, method=method,
                   time_us=round(time_us, 2), speedup_vs_sdpa=round(sdpa_us / time_us, 2), **extra)
        if floor_bytes is not None:
            floor_us = floor_bytes / bandwidth * 1e6
            row.update(
                floor_bytes=floor_bytes, floor_us=round(floor_us, 2), floor_share=round(floor_us / time_us, 3)
            )
        rows.append(row)
        log.info("%s", row)

    for context in args.contexts:
        for batch in args.batches:
            if batch * context > args.max_tokens:
                log.info("skip context %d batch %d (over --max-tokens)", context, batch)
                continue
            torch.manual_seed(context + batch)
            q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
            k_dense = torch.randn(batch, hkv, context, d, device="cuda", dtype=torch.bfloat16)
            v_dense = torch.randn_like(k_dense)
            kv_bytes = 2 * k_dense.numel() * elem
            sdpa_us, sdpa_backend = sdpa_time(q, k_dense, v_dense, scale, args)
            del k_dense, v_dense
            add(context, batch, None, None, "sdpa", sdpa_us, sdpa_us, kv_bytes, backend=sdpa_backend)
            for page_size in args.page_sizes:
                k_cache, v_cache, key_stats, page_table, seq_lens = make_paged_cache(
                    batch, context, hkv, d, page_size
                )
                num_pages = context // page_size

                # ruff reads the loop's later `del k_cache, ...` as leaving these names undefined (F821)
                def dense():
                    return paged_decode_triton(q, k_cache, v_cache, page_table, seq_lens, scale)  # noqa: F821

                # untimed first run: the first timing on a cache allocated where the SDPA tensors were
                # freed runs slow (H100, 128k B=8 P32 dense: 1694 us, then 1430; 1428 on fresh memory)
                bench_graph(dense, args.warmup_ms, args.rep_ms)
                add(
                    context,
                    batch,
                    None,
                    page_size,
                    "dense_paged",
                    bench_graph(dense, args.warmup_ms, args.rep_ms),
                    sdpa_us,
                    kv_bytes,
                )
                for budget in args.budgets:
                    if budget >= context:
                        continue
                    parts = args.parts and context == max(args.contexts) and batch == min(args.batches)
                    for method in ("unique", "quest"):
                        config = UniqueConfig(page_size=page_size, budget_tokens=budget, method=method)
                        stats_bytes = batch * hkv * num_pages * STAT_ROWS_READ * d * elem
                        pages_bytes = 2 * batch * hkv * config.num_select * page_size * d * elem
                        fns = step_functions(
                            q, k_cache, v_cache, key_stats, page_table, seq_lens, scale, config
                        )
                        timed = ("total", "select", "score", "topk", "attend")
                        if method == "quest":
                            timed = ("total",)
                        floors = dict(total=stats_bytes + pages_bytes, select=stats_bytes, score=stats_bytes,
                                      attend=pages_bytes)
                        for part in timed:
                            add(
                                context,
                                batch,
                                budget,
                                page_size,
                                f"{method}_{part}",
                                bench_graph(fns[part], args.warmup_ms, args.rep_ms),
                                sdpa_us,
                                floors.get(part),
                            )
                        # practical floor: one library kernel reading as many bytes
                        if parts and method == "unique":
                            flat = torch.empty(
                                (stats_bytes + pages_bytes) // elem, dtype=torch.bfloat16, device="cuda"
                            )
                            add(
                                context,
                                batch,
                                budget,
                                page_size,
                                "read_same_bytes",
                                bench_graph(
                                    lambda: flat.sum(dtype=torch.float32), args.warmup_ms, args.rep_ms
                                ),
                                sdpa_us,
                                floors["total"],
                            )
                            del flat
                        if method == "unique":
                            checks.append(
                                verify(
                                    q,
                                    k_cache,
                                    v_cache,
                                    key_stats,
                                    page_table,
                                    seq_lens,
                                    scale,
                                    config,
                                    context,
                                    batch,
                                )
                            )
                del k_cache, v_cache, key_stats, page_table, seq_lens
                torch.cuda.empty_cache()
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(rows, indent=1))  # partial results survive a time limit
    meta = dict(
        device=device,
        copy_bandwidth_tbs=round(bandwidth / 1e12, 3),
        torch=torch.__version__,
        python=platform.python_version(),
        command=" ".join(sys.argv),
        q_heads=hq,
        kv_heads=hkv,
        head_dim=d,
        dtype="bfloat16",
        overrides=args.set,
        graph_floor_us=round(graph_floor, 2),
        checks=checks,
    )
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    return rows, meta


def table(rows: list[dict]) -> str:
    """One line per (context, batch, page size, budget)."""
    index = {(r["context"], r["batch"], r["budget"], r["page_size"], r["method"]): r for r in rows}
    head = (
        f"{'ctx':>7} {'B':>3} {'P':>3} {'budget':>6} | {'sdpa':>8} {'dense':>8} | {'unique':>7} "
        f"{'select':>6} {'attend':>6} | {'score':>6} {'topk':>6} {'quest':>7} | {'speedup':>7} {'floor':>6} "
        f"{'share':>5}"
    )
    lines = [head, "-" * len(head)]
    keys = sorted({(r["context"], r["batch"], r["page_size"], r["budget"]) for r in rows if r["budget"]})
    for ctx, b, p, budget in keys:
        def t(method, budget_key=budget, page=p):
            r = index.get((ctx, b, budget_key, page, method))
            return r["time_us"] if r else float("nan")

        total = index.get((ctx, b, budget, p, "unique_total"))
        lines.append(
            f"{ctx:>7} {b:>3} {p:>3} {budget:>6} | {t('sdpa', None, None):>8.1f} "
            f"{t('dense_paged', None):>8.1f} | "
            f"{t('unique_total'):>7.1f} {t('unique_select'):>6.1f} {t('unique_attend'):>6.1f} | "
            f"{t('unique_score'):>6.1f} {t('unique_topk'):>6.1f} {t('quest_total'):>7.1f} | "
            f"{total['speedup_vs_sdpa'] if total else float('nan'):>6.1f}x "
            f"{total['floor_us'] if total else float('nan'):>6.1f} "
            f"{total['floor_share'] if total else float('nan'):>5.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention needs a CUDA device")
    if args.set_from_sweep is not None:
        chosen = best_overrides(json.loads(args.set_from_sweep.read_text()))
        log.info("overrides from %s: %s", args.set_from_sweep, chosen or "none")
        args.set = args.set + chosen
        if not chosen:  # the base variants were compiled with the sweep's (--compile-only)
            args.compile_workers = 0
    if args.compile_only:
        compile_all(grid_tasks(args) + (sweep_tasks(args) if args.tune else []), max(1, args.compile_workers))
        return
    if args.sweep:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(sweep(args), indent=1))
        return
    if args.tune:
        workers, args.compile_workers = args.compile_workers, 0  # --compile-only compiled the sweep
        sweep_rows = sweep(args)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_name(args.output.stem + "_sweep.json").write_text(json.dumps(sweep_rows, indent=1))
        chosen = best_overrides(sweep_rows)
        log.info("overrides from the sweep: %s", chosen or "none")
        args.set = args.set + chosen
        args.compile_workers = workers if chosen else 0
    rows, meta = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row.update(device=meta["device"], copy_bandwidth_tbs=meta["copy_bandwidth_tbs"])
    args.output.write_text(json.dumps(rows, indent=1))
    args.output.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1))
    print(
        f"\n{meta['device']}, copy bandwidth {meta['copy_bandwidth_tbs']} TB/s; times in us per layer "
        f"(bf16, Hq={meta['q_heads']}, Hkv={meta['kv_heads']}, d={meta['head_dim']}); floor = stats + chosen "
        "pages "
        f"at copy bandwidth, share = floor / unique total"
    )
    print(table(rows))
    bad = [c for c in meta["checks"] if not c["ok"]]
    print(
        f"checks: {len(meta['checks']) - len(bad)}/{len(meta['checks'])} ok; graph floor "
        f"{meta['graph_floor_us']} us"
    )
    try:
        from eval.plot_bench_attention import plot

        plot(args.output, args.plot or args.output.with_suffix(".png"))
    except Exception as err:  # the plot is a convenience; the JSON is the record
        log.warning("no plot: %s", err)


if __name__ == "__main__":
    main()
